"""Seeds for fuzz/corpus/: real bytes where a real client or server is at hand.

Run from the repository root with the project venv (target/venv/bin/python fuzz/seed_corpus.py):
starts redis-server and memcached on free ports behind a recording proxy and drives them with
redis-py and pymemcache; records libpq's (psycopg2) startup message from a listener; adds
request lines as curl, wrk, browsers and Django's test client send them, SQL as Django emits
it, and MySQL and PostgreSQL protocol messages from the unit tests (taken from real traffic).
The python_reader, linetable and records seeds come from the unit tests (see docs/reliability.md).
"""

import os
import socket
import subprocess
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def recording_proxy(upstream_port, log):
    """Listen on a free port; forward to upstream; log every client->server chunk and the
    server's first bytes."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def pump(a, b, tag):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                log.append((tag, data))
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pump, args=(c, u, "c"), daemon=True).start()
            threading.Thread(target=pump, args=(u, c, "s"), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing on port {port}")


def redis_seeds():
    import redis

    port = free_port()
    p = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        log = []
        _, pport = recording_proxy(port, log)
        r = redis.Redis(port=pport)
        r.set("user:42:profile", "x" * 40)
        r.get("user:42:profile")
        r.mget(["a:1", "a:2", "a:3"])
        r.hset("session:9f2c", mapping={"uid": "42", "ttl": "300"})
        r.hgetall("session:9f2c")
        r.expire("session:9f2c", 300)
        with r.pipeline(transaction=True) as pipe:
            pipe.incr("hits:/api/users").lpush("q", "job-1").get("user:42:profile")
            pipe.execute()
        r.delete("user:42:profile", "q")
        r.execute_command("PING")
        time.sleep(0.2)
        for i, (tag, data) in enumerate(x for x in log if x[0] == "c"):
            put("downstream_redis", f"redis-py-{i:02}", data)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"PING\r\nGET user:42\r\n")
        s.close()
        put("downstream_redis", "inline", b"PING\r\nGET user:42\r\n")
    finally:
        p.kill()


def memcached_seeds():
    from pymemcache.client.base import Client

    port = free_port()
    p = subprocess.Popen(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port)])
    try:
        wait_port(port)
        log = []
        _, pport = recording_proxy(port, log)
        c = Client(("127.0.0.1", pport))
        c.set("views:home:v2", b"<html>" * 10, expire=60)
        c.get("views:home:v2")
        c.get_many(["u:1", "u:2", "u:3"])
        c.incr("counter", 1)
        c.add("lock:job-7", b"1", expire=5)
        c.delete("views:home:v2")
        c.gets("u:1")
        c.version()
        time.sleep(0.2)
        for i, (tag, data) in enumerate(x for x in log if x[0] == "c"):
            put("downstream_memcached", f"pymemcache-{i:02}", data)
        # Binary protocol GET "key" (magic 0x80, opcode 0x00).
        put(
            "downstream_memcached",
            "binary-get",
            bytes([0x80, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3]) + bytes(12) + b"key",
        )
    finally:
        p.kill()


def postgres_seeds():
    import psycopg2

    log = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def take():
        c, _ = srv.accept()
        log.append(c.recv(65536))
        c.close()

    t = threading.Thread(target=take)
    t.start()
    try:
        psycopg2.connect(
            host="127.0.0.1", port=port, user="app", dbname="shop", sslmode="disable",
            connect_timeout=2,
        )
    except psycopg2.OperationalError:
        pass
    t.join()
    put("downstream_postgres", "libpq-startup", log[0])

    def msg(kind, body):
        return kind + (len(body) + 4).to_bytes(4, "big") + body

    q = b'SELECT "st_author"."id", "st_author"."name" FROM "st_author" WHERE "st_author"."id" = 17 LIMIT 21\0'
    put("downstream_postgres", "simple-query", msg(b"Q", q))
    parse = msg(b"P", b"\0SELECT * FROM orders WHERE user_id = $1 AND state IN ($2, $3)\0\0\0")
    bind = msg(b"B", b"\0\0\0\0\0\x03\0\0\0\x0242\0\0\0\x04open\0\0\0\x04paid\0\0")
    put("downstream_postgres", "extended", parse + bind + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b""))
    put("downstream_postgres", "ssl-request", bytes([0, 0, 0, 8, 4, 0xD2, 0x16, 0x2F]))


def mysql_seeds():
    def packet(seq, body):
        return len(body).to_bytes(3, "little") + bytes([seq]) + body

    greeting = b"\x0a8.0.36\0\x0b\0\0\0abcdefgh\0\xff\xf7\xff\x02\0\xff\xdf" + bytes(
        [0x15] + [0] * 10
    ) + b"ijklmnopqrst\0caching_sha2_password\0"
    put("downstream_mysql", "greeting-then-query",
        bytes([0x80 | min(len(greeting) + 4, 0x7F)]) + packet(0, greeting)[: 0x7F]
        + packet(0, b"\x03SELECT 1"))
    put("downstream_mysql", "com-query",
        packet(0, b"\x03SELECT `auth_user`.`id`, `auth_user`.`username` FROM `auth_user` "
                  b"WHERE `auth_user`.`email` = 'a@b.c' LIMIT 21"))
    put("downstream_mysql", "insert-values",
        packet(0, b"\x03INSERT INTO `log` (`a`, `b`) VALUES (1, 'x'), (2, 'y\\'z'), (3, NULL)"))
    put("downstream_mysql", "com-ping", packet(0, b"\x0e"))
    put("downstream_mysql", "stmt-prepare", packet(0, b"\x16SELECT * FROM t WHERE id = ?"))


REQUESTS = {
    "curl": b"GET /api/users/42?token=abc HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "wrk": b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser": b"GET /o/123e4567-e89b-12d3-a456-426614174000/edit#x HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\nCache-Control: max-age=0\r\nsec-ch-ua: \"Chromium\";v=\"124\"\r\nUpgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: text/html,application/xhtml+xml\r\nCookie: sessionid=5f2b1c9e8d7a6b5c4d3e2f1a\r\n\r\n",
    "post-form": b"POST /accounts/login/ HTTP/1.1\r\nHost: app\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 27\r\n\r\nusername=a&password=secret1",
    "pipelined": b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /blob/5f2b1c9e8d7a6b5c4d3e2f1a HTTP/1.1\r\n\r\n",
    "http10": b"HEAD /health HTTP/1.0\r\n\r\n",
    "truncated": b"GET /search?q=" + b"a" * 240,
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
}


def http_seeds():
    for name, req in REQUESTS.items():
        put("http_request", name, b"\0" + req[:256])
    put("http_request", "pipelined-2", b"\x02" + REQUESTS["pipelined"])
    put("downstream_http", "requests-lib",
        b"GET /v1/prices?sku=17 HTTP/1.1\r\nHost: pricing:8080\r\nUser-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")
    put("downstream_http", "post-json",
        b"POST /v1/charge HTTP/1.1\r\nHost: payments\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"amount\": 1200}")


SQL = [
    b'SELECT "st_author"."id", "st_author"."name" FROM "st_author" WHERE "st_author"."id" = 17 LIMIT 21',
    b"SELECT * FROM orders WHERE id IN (1, 2, 3, 4) AND note = E'it''s' AND h = X'DEADBEEF'",
    b"INSERT INTO log (a, b) VALUES (1, 'x'), (2, 'y'), (3, $tag$body$tag$)",
    b"UPDATE users SET last_login = '2026-12-07 05:00:00+00' WHERE id = %s -- trailing comment",
    b"/* django */ SELECT COUNT(*) AS \"__count\" FROM \"shop_item\" WHERE (\"shop_item\".\"price\" > 9.99e2 AND NOT \"shop_item\".\"hidden\")",
]


def sql_seeds():
    for i, q in enumerate(SQL):
        put("sql_fingerprint", f"postgres-{i}", b"\0" + q)
        put("sql_fingerprint", f"mysql-cut-{i}", b"\x03" + q.replace(b'"', b"`")[: len(q) // 2])


if __name__ == "__main__":
    http_seeds()
    sql_seeds()
    mysql_seeds()
    postgres_seeds()
    redis_seeds()
    memcached_seeds()
