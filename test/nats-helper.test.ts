import t from 'tap';
import { startNatsServer } from './helpers/nats-server.js';
import { connect } from '@nats-io/transport-node';

t.test('a real nats-server starts on a random port and answers', async (t) => {
  const ns = await startNatsServer();
  t.teardown(() => ns.stop());
  const nc = await connect({ servers: ns.url });
  const sub = nc.subscribe('x.y', { callback: (_e, m) => m.respond('pong') });
  const r = await nc.request('x.y', 'ping', { timeout: 2000 });
  t.equal(r.string(), 'pong');
  sub.unsubscribe();
  await nc.close();
});
