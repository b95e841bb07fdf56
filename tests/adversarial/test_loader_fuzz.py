"""Fuzz of the checkpoint readers: random mutations of a real header (seeded, so a failure replays) must
each load or raise LlamalabError: no other exception, no hang, no allocation beyond the file's size.

The files are a small llama written by our own GGUF/HF writers (the SmolLM2 GGUF takes the gguf package
~10 s to parse, too slow for hundreds of cases); the mutations aim at the header, where the counts,
lengths, types, shapes and offsets a reader believes live. The run is in a child under RLIMIT_AS, so a
multi-GB allocation fails the test instead of the machine."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap

CASES = 300
MEMORY = 2 << 30

CHILD = textwrap.dedent("""
    import random, shutil, struct, sys, time
    from pathlib import Path
    from numpy.lib.array_utils import byte_bounds
    from gguf import GGUFReader, GGUFWriter
    from llamalab.config import PRESETS
    from llamalab.errors import LlamalabError
    from llamalab.formats import load_state, load_tokenizer_for, save
    sys.path.insert(0, sys.argv[2])
    from tiny import random_state

    root, cases = Path(sys.argv[1]), int(sys.argv[3])
    args = PRESETS["tiny"].replace(vocab_size=64)
    state = random_state(args)
    vocab = GGUFWriter(root / "vocab.gguf", "llama")  # a small vocabulary, so headers carry arrays
    vocab.add_tokenizer_model("llama")
    vocab.add_token_list(["<unk>", "<s>", "</s>"] + [f"\u2581t{i}" for i in range(61)])
    vocab.add_token_scores([0.0, 0.0, 0.0] + [float(-i) for i in range(61)])
    vocab.add_token_types([2, 3, 3] + [1] * 61)
    vocab.write_header_to_file(); vocab.write_kv_data_to_file(); vocab.write_tensors_to_file(); vocab.close()
    save(state, args, root / "m.gguf", "gguf", gguf_type="q8_0", tokenizer_src=root / "vocab.gguf")
    save(state, args, root / "hf", "hf")
    gguf_bytes = (root / "m.gguf").read_bytes()
    st_bytes = (root / "hf" / "model.safetensors").read_bytes()
    st_header = 8 + struct.unpack_from("<Q", st_bytes, 0)[0]
    reader = GGUFReader(root / "m.gguf")  # where each count, length, type, dim and offset of the header is
    base = byte_bounds(reader.data)[0]
    fields = list(reader.fields.values()) + [t.field for t in reader.tensors]
    gguf_values = [(byte_bounds(p)[0] - base, p.nbytes) for f in fields for p in f.parts if p.nbytes in (4, 8)]
    st_values = [(i, 1) for i in range(8, st_header) if st_bytes[i:i + 1].isdigit()]  # numbers in the JSON header

    def mutate(rng, data, header_end, values):
        data = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(min(header_end, len(data)))
            kind = rng.random()
            if kind < 0.5:  # a header value replaced
                at, size = rng.choice(values)
                if size == 1:
                    data[at:at + 1] = str(rng.choice([0, 9, 99999999999])).encode()
                else:
                    data[at:at + size] = rng.choice([0, 1, 3, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1,
                                                     rng.randrange(2**64)]).to_bytes(8, "little")[:size]
            elif kind < 0.7:  # a random byte
                data[at] = rng.randrange(256)
            elif kind < 0.8:  # a large little-endian integer anywhere in the header
                at -= at % 4
                data[at:at + 8] = struct.pack("<Q", rng.choice([0, 1, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1,
                                                                rng.randrange(2**64)]))
            elif kind < 0.9:  # a truncation
                del data[rng.randrange(len(data)):]
                break
            else:  # a flipped bit
                data[at] ^= 1 << rng.randrange(8)
        return bytes(data[:len(data)])

    rng = random.Random(1234)
    outcomes = {"loaded": 0, "refused": 0}
    target = root / "case"
    shutil.copytree(root / "hf", target / "hf")
    start = time.perf_counter()
    for i in range(cases):
        if i % 2:
            path = target / "m.gguf"
            path.write_bytes(mutate(rng, gguf_bytes, reader.data_offset, gguf_values))
        else:
            path = target / "hf"
            (path / "model.safetensors").write_bytes(mutate(rng, st_bytes, st_header, st_values))
        try:
            state_, args_, extra, fmt, where = load_state(path, lazy=i % 4 in (2, 3))
            if fmt == "gguf":
                load_tokenizer_for(fmt, where, args_.vocab_size, extra)
            outcomes["loaded"] += 1
        except LlamalabError as e:
            assert "\\n" not in str(e), e
            outcomes["refused"] += 1
        except BaseException as e:
            print(f"case {i} ({path.name}): {type(e).__name__}: {e}")
            raise
    print(outcomes, f"{time.perf_counter() - start:.1f}s")
""")


def test_mutated_gguf_and_safetensors_headers_load_or_give_one_error(tmp_path):
    from pathlib import Path

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(Path(__file__).parent.parent), str(CASES)],
                       capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    counts = json.loads(p.stdout.splitlines()[-1].rsplit(" ", 1)[0].replace("'", '"'))
    assert counts["refused"] > CASES // 3 and counts["loaded"] > 0, counts  # the mutations reached the checks
