"""Sends identify, two tracks (Order Completed, Viewed Product), page, screen, group and alias
through Segment's own Python library (segment-analytics-python from PyPI, unmodified), pointed
at eventrelay's ingest with `host`.

Usage: python_client.py HOST WRITE_KEY RUN_ID   (exit 1 if the library reported an error)
"""
import sys

import segment.analytics as analytics

host, write_key, run = sys.argv[1:4]
errors = []

analytics.write_key = write_key
analytics.host = host
analytics.gzip = True  # exercise Content-Encoding: gzip end to end
analytics.max_retries = 3
analytics.on_error = lambda e, batch: errors.append(repr(e))

user = f"py-{run}-user"
analytics.identify(user, {"email": f"{user}@example.com", "name": "Py Thon"})
analytics.track(user, "Order Completed",
                {"orderId": f"py-{run}-order", "total": 27.5,
                 "products": [{"sku": "sku-1", "price": 27.5, "quantity": 1}]})
analytics.track(user, "Viewed Product", {"sku": "sku-2", "name": "Lamp", "price": 9.5})
analytics.page(user, "Docs", "Ingest", {"url": "https://shop.example.com/docs", "title": "Ingest"})
analytics.screen(user, "App", "Home", {"variant": "py"})
analytics.group(user, "acme", {"name": "Acme", "employees": 42})
analytics.alias(f"py-{run}-anon", user)
analytics.flush()
analytics.shutdown()
if errors:
    print("python client errors:", errors, file=sys.stderr)
    sys.exit(1)
print("python client: 7 calls sent")
