"""The start model's SFT data and builder (tiny settings; the real build runs in tests/test_alignment.py)."""

from selfsteer.principles.library import compose_v1_system
from selfsteer.toy import task as T
from selfsteer.toy.start_model import StartModelSettings, build_start_model, sft_conversations

TINY = StartModelSettings(examples=48, batch_size=16, hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1,
                          intermediate_size=64)


def test_sft_data_obeys_named_principles_and_mixes_the_rest():
    train, heldout = T.split_prompts(0)
    settings = StartModelSettings(examples=4000)
    convs = sft_conversations(settings, train)
    by_text = {p.text: p for p in train}
    assert not {c[0] for c in convs} & {p.text for p in heldout}
    systems = {compose_v1_system([d], good): (d.name, good) for d in T.LIBRARY for good in (True, False)}
    bare = [T.gold_scores(by_text[p], r) for p, s, r in convs if s is None]
    single = [(systems[s], T.gold_scores(by_text[p], r)) for p, s, r in convs if s in systems]
    assert 0.3 < len(bare) / len(convs) < 0.4 and single
    for (name, good), scores in single:
        assert scores[name] == float(good)
    for d in T.DIMENSIONS:  # mixed quality without a principle
        assert 0.4 < sum(s[d] for s in bare) / len(bare) < 0.6


def test_build_is_cached_and_deterministic(tmp_path):
    a = build_start_model(tmp_path / "a", TINY)
    b = build_start_model(tmp_path / "b", TINY)
    assert a.name == b.name and (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert build_start_model(tmp_path / "a", TINY) == a and (a / "model.safetensors").stat().st_mtime_ns == stamp
    other = build_start_model(tmp_path / "a", StartModelSettings(**{**TINY.__dict__, "seed": 1}))
    assert other != a
