"""vLLM's "weights were not loaded" warning, emitted as vLLM 0.32 emits it
(model_executor/model_loader/reload/inplace.py), becomes an error for the layers a reload was given
and stays quiet for the layers a partial (one-bucket) reload leaves alone. Needs no vLLM install."""

import logging

from selfsteer.engines.vllm_worker import capture_not_loaded, unloaded_in

LOGGER = "selfsteer-test.vllm.reload.inplace"  # a private name: the real vLLM logger is left alone here


def test_not_loaded_names_are_collected_and_filtered_to_the_layers_sent(capsys):
    handler = capture_not_loaded(LOGGER)
    log = logging.getLogger(LOGGER)
    log.warning("Following weights were not loaded from checkpoint: %s",
                {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.down_proj.weight"})
    log.warning("Reloading from disk means that weights will be in checkpoint format.")
    assert handler.names == {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    # The bucket held layer 0's attention: its qkv_proj not loaded is the error; layer 1 was not sent.
    assert unloaded_in({"model.layers.0.self_attn.qkv_proj"}, handler.names) == [
        "model.layers.0.self_attn.qkv_proj.weight"]
    assert unloaded_in({"model.layers.1.self_attn.qkv_proj"}, handler.names) == []
    assert capsys.readouterr().err == ""  # collected, not printed for every partial reload
    assert capture_not_loaded(LOGGER) is not handler and len(log.handlers) == 1  # re-init: one collector
