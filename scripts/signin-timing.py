import os
PORT=int(os.environ.get("DEMO_PORT","18082"))
import socket, time, json, statistics
def attempt(src, email, pw):
    body=json.dumps({"email":email,"password":pw}).encode()
    req=b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    s=socket.socket(); s.bind((src,0)); s.connect(("127.0.0.1",PORT))
    t=time.perf_counter(); s.sendall(req); d=b""
    while True:
        c=s.recv(4096)
        if not c: break
        d+=c
    dt=time.perf_counter()-t; s.close()
    return int(d[9:12]), dt*1000
res={"unknown account":[], "wrong password":[], "locked account":[], "right password":[]}
n=2
for i in range(1,31):
    # each attempt from its own loopback address: the per-address limit stays out of the way
    for kind,email,pw in [("unknown account",f"nobody{i}@t.test","a long enough password"),
                          ("right password",f"u{i}@t.test","a long enough password")]+\
                         [("wrong password",f"u{i}@t.test","wrong guess")]*5+[("locked account",f"u{i}@t.test","wrong guess")]*2:
        n+=1
        st,ms=attempt(f"127.0.{n//250}.{n%250+2}",email,pw)
        expect=201 if kind=="right password" else 401
        assert st==expect,(kind,st)
        res[kind].append(ms)
for k,v in res.items():
    v=sorted(v); print(f"{k:16s} n={len(v):3d} median={statistics.median(v):6.1f} ms  p10={v[len(v)//10]:6.1f}  p90={v[len(v)*9//10]:6.1f}")
