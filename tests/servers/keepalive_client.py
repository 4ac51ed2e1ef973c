"""Keep-alive client: N GET requests on one connection with http.client; prints the statuses."""
import http.client
import sys

port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
statuses = []
for _ in range(n):
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    statuses.append(r.status)
conn.close()
print(" ".join(map(str, statuses)))
