"""Where vLLM is not installed (the main environment), `use_vllm` is refused before anything is loaded, with a message
naming both ways to install it. (Runs in the main suite; the vLLM environment skips it.)"""

import importlib.util

import pytest

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.vllm_support import VLLMUnavailable, check_vllm_can_run


pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def test_vllm_not_installed_is_refused_by_the_trainer_before_loading(tmp_path):
    args = DiscoConfig(output_dir=str(tmp_path), use_vllm=True, use_cpu=True, report_to="none", num_generations=4,
                       per_device_train_batch_size=4)
    with pytest.raises(VLLMUnavailable) as refused:
        DiscoTrainer(model=str(tmp_path / "no-such-model"), reward_funcs=lambda completions, **kw: [0.0], args=args)
    message = str(refused.value)
    assert "vLLM is not installed" in message and "\n" not in message
    assert "pip install 'disco-trl[vllm]'" in message and "scripts/setup_vllm.sh" in message
    check_vllm_can_run(DiscoConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))  # no vLLM asked: fine
