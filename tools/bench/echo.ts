// The raw NATS request/reply baseline for tools/bench: a separate process that
// answers every request on a subject with a small JSON reply, like a server would.

import { connect } from '@nats-io/transport-node';

const [url, subject] = process.argv.slice(2);
const nc = await connect({ servers: url! });
let n = 0;
nc.subscribe(subject!, {
  callback: (_err, msg) => {
    const req = JSON.parse(new TextDecoder().decode(msg.data)) as { key?: string };
    msg.respond(JSON.stringify({ ok: true, ts: ++n, index: n, value: req.key ?? '' }));
  },
});
await nc.flush();
process.stdout.write('ready\n');
process.on('SIGTERM', () => void nc.drain().then(() => process.exit(0)));
