"""vLLM server mode under DiscoTrainer, against a real vLLM server process (vLLM's CPU build).

The test starts the server on 127.0.0.1 at a free port with TRL's own flags (`tests/vllm_testing.server_command`) and
always stops it. Generation goes through the server (TRL's `VLLMClient`: `/v1/completions` with token ids, `n` =
num_generations), and DisCO trains on those completions.

What is replaced, and why. TRL pushes weights to the server over NCCL: `VLLMClient.init_communicator` joins the
server's NCCL weight-transfer group (it refuses a non-CUDA device), and `VLLMClient.update_named_params(metadata,
named_params)` announces the tensors (`/start_weight_update`, `/update_weights`), broadcasts them over NCCL and
finishes (`/finish_weight_update`). NCCL needs CUDA on both sides, so exactly these two methods are replaced, with a
file transport: `init_communicator` makes a staging folder; `update_named_params` records what the trainer hands over
(the metadata and every tensor, as it streams), writes the tensors to a safetensors file there, and has the server
load it with vLLM's own reload (`/collective_rpc` -> `reload_weights(weights_path=...)`, a dev-mode endpoint).
Everything else is TRL's: the client's health check, generation, prefix-cache reset, `VLLMGeneration.sync_weights`
(which collects the metadata once and streams `_iter_named_params`) and when the trainer syncs.

The server's model has an untied LM head: vLLM's CPU backend does not re-pack a tied LM head's logits kernel on reload
(disco_trl/vllm_support.repack_lm_heads fixes that in colocate mode; the server process is out of the trainer's reach).
"""

import time

import pytest
import torch
from vllm_testing import require_vllm


require_vllm()

import requests  # noqa: E402  (installed with vLLM)
from disco_testing import free_port  # noqa: E402
from trl.generation.vllm_client import VLLMClient  # noqa: E402
from vllm_testing import (  # noqa: E402
    PROBE_TEXT,
    VLLMRecordingTrainer,
    VLLMServer,
    load_model,
    parity_reward,
    prompt_dataset,
    save_tiny_model,
    trainer_sequence_logprobs,
    vllm_config,
)


pytestmark = pytest.mark.vllm
BF16_LOGP_TOL = 0.02  # as in test_vllm_colocate.py
STEPS, SPG = 4, 2  # 2 generations (syncs at steps 0 and 2), 2 updates each


class FileTransport:
    """Stands in for TRL's NCCL weight transfer (the two VLLMClient methods); records each hand-over."""

    def __init__(self, staging):
        self.staging, self.handovers, self.init_calls, self.trainer = staging, [], [], None

    def init_communicator(self, client, device=0):
        self.staging.mkdir(parents=True, exist_ok=True)
        self.init_calls.append(str(device))

    def update_named_params(self, client, metadata, named_params):
        from safetensors.torch import save_file

        current = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters()}  # at hand-over time
        received = {name: tensor.detach().clone() for name, tensor in named_params}
        self.handovers.append({"step": self.trainer.state.global_step, "metadata": list(metadata),
                               "order": list(received), "received": received, "current": current})
        folder = self.staging / f"sync{len(self.handovers)}"
        folder.mkdir()
        save_file({n: t.contiguous() for n, t in received.items()}, str(folder / "model.safetensors"))
        response = client.session.post(f"{client.base_url}/collective_rpc", timeout=120,
                                       json={"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        assert response.status_code == 200, response.text


def server_logprobs(url: str, model: str, token_ids: list[int]) -> torch.Tensor:
    body = {"model": model, "prompt": [token_ids], "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0}
    steps = requests.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["prompt_logprobs"]
    logps = [step[str(tok)]["logprob"] for step, tok in zip(steps[1:], token_ids[1:])]
    return torch.tensor(logps, dtype=torch.float64)


def completion_requests(url: str) -> float:
    """The server's count of finished sequences (its Prometheus metrics; a prompt sampled n times counts n)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.fixture(scope="module")
def server_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    model_dir = save_tiny_model(root / "model", tied=False)
    transport = FileTransport(root / "staging")
    with VLLMServer(model_dir, root / "server.log") as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(VLLMClient, "init_communicator",
                      lambda self, device=0: transport.init_communicator(self, device))
        patch.setattr(VLLMClient, "update_named_params",
                      lambda self, metadata, params: transport.update_named_params(self, metadata, params))
        model, tokenizer = load_model(model_dir, torch.float32)
        args = vllm_config(root / "out", 8, 1, SPG, max_steps=STEPS, vllm_mode="server",
                           vllm_server_base_url=server.url, vllm_server_timeout=30, learning_rate=1e-2)
        trainer = VLLMRecordingTrainer(model=model, reward_funcs=parity_reward, args=args,
                                       train_dataset=prompt_dataset(), processing_class=tokenizer)
        transport.trainer = trainer
        probe_ids = tokenizer(PROBE_TEXT)["input_ids"]
        probes, sync = [], trainer.vllm_generation.sync_weights

        def probed_sync():  # TRL's sync, then both models' log-probs of a fixed sequence
            sync()
            probes.append((server_logprobs(server.url, trainer.vllm_generation.vllm_client.model, probe_ids),
                           trainer_sequence_logprobs(trainer.model, probe_ids)))

        trainer.vllm_generation.sync_weights = probed_sync
        requests_before = completion_requests(server.url)
        trainer.train()
        served = completion_requests(server.url) - requests_before - len(probes)
        return {"transport": transport, "probes": probes, "served": served, "trainer": trainer,
                "log_history": trainer.state.log_history, "generations": trainer.generations}


def test_vllm_server_generates_and_disco_trains(server_run):
    logs = [h for h in server_run["log_history"] if "disco/objective" in h]
    assert [h["step"] for h in logs] == list(range(1, STEPS + 1))
    assert all(h["loss"] == h["loss"] for h in logs)
    generations = server_run["generations"]
    assert len(generations) == STEPS // SPG
    # every completion the trainer trained on was sampled by the server (it counts each of the n samples of a prompt)
    assert server_run["served"] == sum(len(g["prompt_ids"]) for g in generations)
    # TRL set up its (replaced) weight transfer once, for the trainer's device
    assert [torch.device(d).type for d in server_run["transport"].init_calls] == ["cpu"]


def test_vllm_server_receives_exactly_the_trainers_current_weights(server_run):
    handovers = server_run["transport"].handovers
    assert [h["step"] for h in handovers] == [0, 2]
    for h in handovers:
        current = h["current"]
        assert h["order"] == list(current)  # every parameter, in the model's order, under its own name
        assert h["metadata"] == [(n, str(p.dtype).removeprefix("torch."), list(p.shape)) for n, p in current.items()]
        for name, tensor in h["received"].items():
            assert tensor.dtype == current[name].dtype and torch.equal(tensor, current[name]), name
    first, second = handovers[0]["received"], handovers[1]["received"]
    assert any(not torch.equal(first[n], second[n]) for n in first)  # the second sync carried the update
    initial = load_model(server_run["trainer"].model.name_or_path, torch.float32)[0]
    assert all(torch.equal(first[n], p) for n, p in initial.named_parameters())  # the first: the initial model


def test_vllm_server_generates_from_the_pushed_weights(server_run):
    probes = server_run["probes"]
    assert len(probes) == 2
    for served, trainer in probes:
        assert float((served - trainer).abs().max()) < BF16_LOGP_TOL
    assert float((probes[1][0] - probes[0][0]).abs().max()) > 3 * BF16_LOGP_TOL


def test_vllm_unreachable_server_fails_within_its_timeout(tmp_path):
    model, tokenizer = load_model(save_tiny_model(tmp_path / "model"), torch.float32)
    port = free_port()  # nothing listens there
    args = vllm_config(tmp_path / "out", 8, 1, 2, vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{port}",
                       vllm_server_timeout=3)
    start = time.monotonic()
    with pytest.raises(requests.ConnectionError, match=f"can't be reached at http://127.0.0.1:{port} after 3"):
        VLLMRecordingTrainer(model=model, reward_funcs=parity_reward, args=args, train_dataset=prompt_dataset(),
                             processing_class=tokenizer)
    assert time.monotonic() - start < 3 + 10
