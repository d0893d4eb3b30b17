"""A local Google Cloud Storage for the tests: gcp-storage-emulator, plus the HTTPS proxy
that TensorFlow's GCS filesystem needs to reach it.

Each client of a gs:// path is pointed at it by the environment (`client_env`):
  * tensorstore (Orbax's arrays): TENSORSTORE_GCS_HTTP_URL, the emulator's URL;
  * google-cloud-storage (Orbax's bucket check): STORAGE_EMULATOR_HOST;
  * tf.io.gfile (etils.epath, Orbax's directories, tf.data, TensorBoard, mind_jax.paths):
    its endpoints (https://www.googleapis.com/..., https://storage.googleapis.com/) are
    compiled in, with no setting for another; it honours HTTPS_PROXY and CURL_CA_BUNDLE,
    so a proxy on 127.0.0.1 terminates TLS for those hosts with a throw-away CA (written
    to <dir>/ca.pem) and forwards each request to the emulator, rewriting resumable
    uploads' `Location: http://` to https.

Run as a process: `python tests/gcs_emulator.py DIR BUCKET...` prints one JSON line
{"emu_port", "proxy_port", "ca"} when ready and stops when its stdin closes.
"""
import datetime
import http.client
import http.server
import ipaddress
import json
import logging
import os
import socketserver
import ssl
import sys
import threading
import urllib.parse


def make_certs(workdir):
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'test-gcs-ca')])
  ca_cert = (
      x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(days=1))
      .not_valid_after(now + datetime.timedelta(days=2))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
      .add_extension(x509.KeyUsage(
          digital_signature=True, content_commitment=False,
          key_encipherment=False, data_encipherment=False, key_agreement=False,
          key_cert_sign=True, crl_sign=True, encipher_only=False,
          decipher_only=False), True)
      .add_extension(x509.SubjectKeyIdentifier.from_public_key(
          ca_key.public_key()), False)
      .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  names = ['www.googleapis.com', 'storage.googleapis.com',
           'oauth2.googleapis.com', 'localhost']
  cert = (
      x509.CertificateBuilder()
      .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                  names[0])]))
      .issuer_name(ca_name).public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(days=1))
      .not_valid_after(now + datetime.timedelta(days=2))
      .add_extension(x509.SubjectAlternativeName(
          [x509.DNSName(n) for n in names]
          + [x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), False)
      .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
      .add_extension(x509.ExtendedKeyUsage(
          [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
      .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
          ca_key.public_key()), False)
      .sign(ca_key, hashes.SHA256()))
  pem = serialization.Encoding.PEM
  ca_path = os.path.join(workdir, 'ca.pem')
  with open(ca_path, 'wb') as f:
    f.write(ca_cert.public_bytes(pem))
  crt_path = os.path.join(workdir, 'server.pem')
  with open(crt_path, 'wb') as f:
    f.write(cert.public_bytes(pem))
    f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return ca_path, crt_path


_HOP = {'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding',
        'expect', 'te', 'upgrade', 'proxy-authorization'}


class ProxyHandler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  emu_port = None
  ssl_ctx = None

  def log_message(self, fmt, *args):  # quiet
    if os.environ.get('GCS_EMU_VERBOSE'):
      sys.stderr.write('[proxy] ' + (fmt % args) + '\n')

  def do_CONNECT(self):
    self.send_response(200, 'Connection established')
    self.end_headers()
    self.wfile.flush()
    tls = self.ssl_ctx.wrap_socket(self.connection, server_side=True)
    self.connection = tls
    self.rfile = tls.makefile('rb', -1)
    self.wfile = socketserver._SocketWriter(tls)  # pylint: disable=protected-access
    self.close_connection = False

  def _body(self):
    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      out = b''
      while True:
        size = int(self.rfile.readline().split(b';')[0].strip(), 16)
        if size == 0:
          while self.rfile.readline() not in (b'\r\n', b'\n', b''):
            pass
          return out
        out += self.rfile.read(size)
        self.rfile.readline()
    n = int(self.headers.get('Content-Length') or 0)
    return self.rfile.read(n) if n else None

  def _forward(self):
    path = self.path
    if path.startswith('http://') or path.startswith('https://'):
      path = '/' + path.split('://', 1)[1].split('/', 1)[1]
    body = self._body()
    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
    if body is not None:
      headers['Content-Length'] = str(len(body))
    conn = http.client.HTTPConnection('127.0.0.1', self.emu_port, timeout=60)
    conn.request(self.command, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    self.send_response(resp.status, resp.reason)
    for k, v in resp.getheaders():
      if k.lower() in _HOP or k.lower() in ('content-length', 'server', 'date'):
        continue
      if k.lower() == 'location' and v.startswith('http://'):
        v = 'https://' + v[len('http://'):]
      self.send_header(k, v)
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(data)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True
  allow_reuse_address = True


def client_env(info: dict) -> dict:
  """The environment that points every gs:// client of a process at the emulator: set it
  before tensorflow or tensorstore is imported (a subprocess's env)."""
  proxy = f"http://127.0.0.1:{info['proxy_port']}"
  emulator = f"http://127.0.0.1:{info['emu_port']}"
  return {
      "HTTPS_PROXY": proxy, "https_proxy": proxy,
      "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
      "CURL_CA_BUNDLE": info["ca"],
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token", "NO_GCE_CHECK": "true",
      "TENSORSTORE_GCS_HTTP_URL": emulator,
      "STORAGE_EMULATOR_HOST": emulator,
      # Fail in seconds, not after TF's ten retries of ~200 s; no stale caches between
      # processes that share the bucket.
      "GCS_RETRY_CONFIG_MAX_RETRIES": "2", "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "10000",
      "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "100000", "GCS_READ_CACHE_MAX_SIZE_MB": "0",
      "GCS_STAT_CACHE_MAX_AGE": "0", "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
  }


def _answer_generations() -> None:
  """gcp-storage-emulator bug: media downloads carry no x-goog-generation header, which
  tensorstore's OCDBT reads for its conditional manifest rewrite (without it, every
  Orbax save fails: 'Malformed StorageGeneration')."""
  from gcp_storage_emulator.handlers import objects

  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 (a missing object: download already answered 404)
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])

  objects.download = download_with_generation


def main():
  workdir = sys.argv[1]
  buckets = sys.argv[2:]
  os.makedirs(workdir, exist_ok=True)
  logging.basicConfig(level=logging.DEBUG if os.environ.get(
      'GCS_EMU_VERBOSE') else logging.CRITICAL)
  _answer_generations()  # before the server module takes its handlers
  from gcp_storage_emulator import server as emu_server
  from gcp_storage_emulator.server import create_server

  # gcp-storage-emulator bug: a zero-byte media upload (how TF's GCS
  # filesystem creates `dir/` markers: CreateDir/RecursivelyCreateDir) makes
  # _read_data() return None and _media_upload() crash on len(None).
  _orig_read_data = emu_server._read_data

  def _read_data(request_handler, query):
    data = _orig_read_data(request_handler, query)
    if data is None and query.get('uploadType') in (['media'], ['resumable']):
      return b''
    return data
  emu_server._read_data = _read_data
  from gcp_storage_emulator.handlers import buckets as buckets_h

  # Emulator is a single-threaded http.server; raise its listen backlog so
  # bursts of concurrent tensorstore requests queue instead of being refused.
  http.server.HTTPServer.request_queue_size = 256
  # Bind port 0 -> free port, no race.
  emu = create_server('127.0.0.1', 0, in_memory=True)
  for b in buckets:
    buckets_h.create_bucket(b, emu._storage)  # pylint: disable=protected-access
  emu.start()
  emu_port = emu._api._httpd.server_address[1]  # pylint: disable=protected-access

  ca_path, crt_path = make_certs(workdir)
  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  ctx.load_cert_chain(crt_path)
  ProxyHandler.emu_port = emu_port
  ProxyHandler.ssl_ctx = ctx
  proxy = ThreadingServer(('127.0.0.1', 0), ProxyHandler)
  threading.Thread(target=proxy.serve_forever, daemon=True).start()
  print(json.dumps({'emu_port': emu_port,
                    'proxy_port': proxy.server_address[1],
                    'ca': ca_path}), flush=True)
  try:
    sys.stdin.read()  # exit when parent closes stdin / dies
  finally:
    proxy.shutdown()
    emu.stop()



def list_objects(info: dict, bucket: str, prefix: str = "") -> list[str]:
  """Object names in the emulator's bucket, read over its JSON API (no client needed)."""
  conn = http.client.HTTPConnection("127.0.0.1", info["emu_port"], timeout=60)
  conn.request("GET", f"/storage/v1/b/{bucket}/o?prefix={urllib.parse.quote(prefix)}")
  items = json.loads(conn.getresponse().read()).get("items", [])
  conn.close()
  return sorted(item["name"] for item in items)


def read_object(info: dict, bucket: str, name: str) -> bytes:
  conn = http.client.HTTPConnection("127.0.0.1", info["emu_port"], timeout=60)
  conn.request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")
  data = conn.getresponse().read()
  conn.close()
  return data


if __name__ == '__main__':
  main()
