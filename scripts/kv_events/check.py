"""tandem's KV events as vLLM's subscribers read them (issue 16).

    python check.py TANDEM_BIN

Starts `tandem serve` on a generated tiny model with vLLM's `--kv-events-config` (ZeroMQ PUB
and replay endpoints on ports chosen at run time, a 1 MiB KV pool: 128 blocks of 16 tokens),
subscribes with pyzmq and decodes every batch with msgspec using vLLM's own event types (those
of vLLM's `kv_events_subscriber.py` example, and the older five-field `BlockStored`). Checks:
a prompt's full blocks arrive as `BlockStored` with the prompt's token ids, block size 16, no
parent for the first block, and the hashes recomputed here from the tokens (tandem's key: the
SHA-256 chain of `crates/core/src/kv/hash.rs`, its low 64 bits); the same prompt again stores
nothing; prompts that fill the pool make `BlockRemoved` name the first prompt's blocks;
sequence numbers have no gaps; the replay socket sends the buffered batches again, then the
end marker. Exits non-zero on the first failure.
"""
import hashlib, http.client, json, os, struct, subprocess, sys, tempfile, time

import msgspec
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testkit import check, free_port  # noqa: E402

TANDEM = sys.argv[1]
BLOCK = 16


# vLLM's types (vllm.distributed.kv_events, as its subscriber example declares them).
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


# The five-field BlockStored of the first vLLM releases with KV events.
class OldEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class OldStored(OldEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None


class OldRemoved(OldEvent, tag="BlockRemoved"):
    block_hashes: list[int]


class OldCleared(OldEvent, tag="AllBlocksCleared"):
    pass


class OldBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[OldStored | OldRemoved | OldCleared]


decode = msgspec.msgpack.Decoder(type=KVEventBatch)
decode_old = msgspec.msgpack.Decoder(type=OldBatch)


def request(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read().decode()
    c.close()
    return r.status, data


def chain(tokens):
    """tandem's block keys for the full blocks of `tokens`, as sent (low 64 bits)."""
    keys, parent = [], None
    for i in range(len(tokens) // BLOCK):
        h = hashlib.sha256()
        h.update(b"\x00" if parent is None else b"\x01" + parent)
        h.update(b"".join(struct.pack("<I", t) for t in tokens[i * BLOCK:(i + 1) * BLOCK]))
        parent = h.digest()[:16]
        keys.append(int.from_bytes(parent[:8], "little"))
    return keys


class Subscriber:
    def __init__(self, ctx, port, topic):
        self.sub = ctx.socket(zmq.SUB)
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.sub.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.raw, self.events = [], []  # raw: (sequence number, payload) as received

    def drain(self, seconds):
        """Everything published within `seconds`."""
        end = time.time() + seconds
        while time.time() < end:
            if self.sub.poll(100):
                topic, seq, payload = self.sub.recv_multipart()
                self.raw.append((int.from_bytes(seq, "big"), payload))
                batch = decode.decode(payload)
                old = decode_old.decode(payload)
                assert len(old.events) == len(batch.events)
                self.events.extend(batch.events)


def main():
    tmp = tempfile.mkdtemp(prefix="tandem-kv-events-")
    model = os.path.join(tmp, "tiny")
    subprocess.run([TANDEM, "gen-model", "--preset", "tiny", "--out", model], check=True, stdout=subprocess.DEVNULL)
    port, pub, replay = free_port(), free_port(), free_port()
    cfg = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{pub}",
           "replay_endpoint": f"tcp://*:{replay}", "topic": "kv-events"}
    server = subprocess.Popen([TANDEM, "serve", "--model", model, "--port", str(port), "--kv-memory-mb", "1",
                               "--kv-events-config", json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        while not any("on http://" in l for l in lines):
            line = server.stdout.readline()
            if not line:
                raise SystemExit("tandem serve exited: " + "".join(lines))
            lines.append(line)
        check(any(f"KV events on tcp://0.0.0.0:{pub}" in l for l in lines), "serve says where it publishes: " + lines[0].strip())
        ctx = zmq.Context()
        sub = Subscriber(ctx, pub, "kv-events")
        time.sleep(0.5)  # the subscription reaches the publisher

        prompt = [1000 + i for i in range(40)]  # 2 full blocks and 8 tokens
        status, _ = request(port, {"model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0})
        check(status == 200, "a 40-token prompt completes")
        sub.drain(1.0)
        stored = [e for e in sub.events if isinstance(e, BlockStored)]
        first = chain(prompt)
        check(len(stored) == 1 and stored[0].block_hashes == first,
              f"one BlockStored with the prompt's 2 block keys recomputed from its tokens: {stored}")
        s = stored[0]
        check(s.token_ids == prompt[:32] and s.block_size == 16 and s.parent_block_hash is None and s.medium == "GPU",
              "its token ids are the prompt's first 32, block size 16, no parent, medium GPU")

        status, _ = request(port, {"model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0})
        sub.drain(1.0)
        check(status == 200 and len([e for e in sub.events if isinstance(e, BlockStored)]) == 1,
              "the same prompt again hits the cache: nothing new stored")

        # 128 blocks hold 2,048 tokens: 12 prompts of 300 other tokens cycle the whole pool.
        statuses = [request(port, {"model": "tiny", "prompt": [2000 + 300 * k + i for i in range(300)],
                                   "max_tokens": 1, "temperature": 0})[0] for k in range(12)]
        check(statuses == [200] * 12, "12 prompts of 300 other tokens complete")
        sub.drain(1.5)
        removed = {h for e in sub.events if isinstance(e, BlockRemoved) for h in e.block_hashes}
        check(set(first) <= removed, "BlockRemoved names the first prompt's blocks once the pool is reused")
        later = [e for e in sub.events if isinstance(e, BlockStored)][1]
        check(later.block_hashes == chain([2000 + i for i in range(300)])[:len(later.block_hashes)] and len(later.block_hashes) == 18,
              "a 300-token prompt stores its 18 full blocks as one chain")
        seqs = [n for n, _ in sub.raw]
        check(seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"sequence numbers without gaps: {seqs[:5]}…")

        # A DEALER (with REQ's empty delimiter) takes the whole stream of replies.
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{replay}")
        dealer.send_multipart([b"", seqs[0].to_bytes(8, "big")])
        replayed = []
        while dealer.poll(5000):
            _, seq, payload = dealer.recv_multipart()
            if int.from_bytes(seq, "big", signed=True) == -1:
                break
            replayed.append((int.from_bytes(seq, "big"), payload))
        else:
            check(False, "the replay ends with sequence -1")
        check(replayed == sub.raw, f"replay from the first sequence number resends all {len(sub.raw)} batches, then -1")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
