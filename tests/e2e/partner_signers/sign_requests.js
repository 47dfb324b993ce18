// A partner that signs its requests with Node's http-message-signatures
// (RFC 9421), computing the Content-Digest itself, for the broker's
// signed-request tests. One JSON line per case on stdout: {case, status, body}.
//
// usage: node sign_requests.js URL CERT KEY CA SIGN_KEY KEYID OTHER_KEY OTHER_KEYID
// (ECDSA P-256 keys; the cases: ok, tampered, stale, replay, other_key, unsigned)
'use strict';
const fs = require('fs');
const https = require('https');
const crypto = require('crypto');
const { httpbis: { signMessage }, createSigner } = require('http-message-signatures');

const [url, certFile, keyFile, caFile, signKey, keyid, otherKey, otherKeyid] = process.argv.slice(2);
const tls = { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), ca: fs.readFileSync(caFile) };

function body(n) {
  return JSON.stringify({ amount: `${n}.00`, currency: 'EUR', to: 'DE89370400440532013000' });
}

async function signed(keyFilePath, kid, text, created) {
  const digest = crypto.createHash('sha256').update(text).digest('base64');
  const key = createSigner(crypto.createPrivateKey(fs.readFileSync(keyFilePath)), 'ecdsa-p256-sha256', kid);
  return signMessage({
    key,
    fields: ['@method', '@authority', '@path', '@query', 'content-digest'],
    params: ['keyid', 'alg', 'created', 'expires', 'nonce'],
    paramValues: {
      nonce: crypto.randomBytes(16).toString('base64url'),
      created: created || new Date(),
      expires: new Date((created || new Date()).getTime() + 300000),
    },
  }, {
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', 'content-digest': `sha-256=:${digest}:` },
  });
}

function send(name, req, text) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const r = https.request({
      ...tls, host: u.hostname, port: u.port, path: u.pathname + u.search, method: 'POST',
      headers: { ...req.headers, 'content-length': Buffer.byteLength(text) }, agent: false,
    }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        console.log(JSON.stringify({ case: name, status: res.statusCode, body: data }));
        resolve();
      });
    });
    r.on('error', reject);
    r.end(text);
  });
}

(async () => {
  const plain = { headers: { 'content-type': 'application/json' } };
  await send('ok', await signed(signKey, keyid, body(10)), body(10));
  await send('tampered', await signed(signKey, keyid, body(10)), body(99));
  await send('stale', await signed(signKey, keyid, body(10), new Date(Date.now() - 600000)), body(10));
  const once = await signed(signKey, keyid, body(10));
  await send('replay_first', once, body(10));
  await send('replay', once, body(10));
  await send('other_key', await signed(otherKey, otherKeyid, body(10)), body(10));
  await send('unsigned', plain, body(10));
})().catch((e) => { console.error(e); process.exit(1); });
