// Sends identify, two tracks (Order Completed, Viewed Product), page, screen, group and alias
// through Segment's own Node.js library (@segment/analytics-node from npm, unmodified), pointed
// at eventrelay's ingest with `host`.
// Usage: node node_client.mjs HOST WRITE_KEY RUN_ID   (exit 1 if the library reported an error)
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, run] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushInterval: 200, maxRetries: 3 })
const errors = []
analytics.on('error', (e) => errors.push(String(e?.reason ?? e)))

const userId = `node-${run}-user`
analytics.identify({ userId, traits: { email: `${userId}@example.com`, name: 'No De' } })
analytics.track({
  userId,
  event: 'Order Completed',
  properties: { orderId: `node-${run}-order`, total: 27.5, products: [{ sku: 'sku-1', price: 27.5, quantity: 1 }] },
})
analytics.track({ userId, event: 'Viewed Product', properties: { sku: 'sku-2', name: 'Lamp', price: 9.5 } })
analytics.page({ userId, category: 'Docs', name: 'Ingest', properties: { url: 'https://shop.example.com/docs', title: 'Ingest' } })
analytics.screen({ userId, name: 'Home', properties: { variant: 'node' } })
analytics.group({ userId, groupId: 'acme', traits: { name: 'Acme', employees: 42 } })
analytics.alias({ userId, previousId: `node-${run}-anon` })
await analytics.closeAndFlush({ timeout: 20000 })
if (errors.length) {
  console.error('node client errors:', errors)
  process.exit(1)
}
console.log('node client: 7 calls sent')
