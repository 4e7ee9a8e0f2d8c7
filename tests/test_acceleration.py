"""Selective checkpointing: same numbers as DiffSynth's all-or-nothing, same parameter names (LoRA keys)."""
import torch

from wan_sft.acceleration import auto_checkpoint_blocks, configure_blocks, video_tokens
from wan_sft.lora import add_lora
from wan_sft.model_files import load_pipeline


def test_video_tokens_of_the_default_size():
    assert video_tokens(81, 896, 480) == 21 * 28 * 15


def test_checkpointing_any_number_of_blocks_gives_the_same_gradients(tiny_model):
    pipe = load_pipeline(tiny_model, "cpu", torch.float32)
    torch.manual_seed(0)
    add_lora(pipe.dit, 4)
    for p in pipe.dit.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.1)  # lora_B starts at zero; make every adapter matter
    names = [name for name, _ in pipe.dit.named_parameters()]
    x = torch.randn(1, 12, 64, requires_grad=False)
    context, t_mod = torch.randn(1, 8, 64), torch.randn(1, 6, 64)
    freqs = torch.randn(12, 1, 16, dtype=torch.complex64)

    def grads(checkpointed):
        configure_blocks(pipe.dit, checkpointed, compile_blocks=False)
        pipe.dit.zero_grad()
        out = x
        for block in pipe.dit.blocks:
            out = block(out, context, t_mod, freqs)
        out.square().mean().backward()
        return [p.grad.clone() for p in pipe.dit.parameters() if p.requires_grad]

    reference = grads(0)
    for checkpointed in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(reference, grads(checkpointed)))
    assert [name for name, _ in pipe.dit.named_parameters()] == names
    checkpoint = torch.utils.checkpoint.checkpoint
    assert [getattr(b.forward, "func", None) is checkpoint for b in pipe.dit.blocks] == [True, True]
    configure_blocks(pipe.dit, 1, compile_blocks=False)  # reconfiguring starts from the plain forward
    assert [getattr(b.forward, "func", None) is checkpoint for b in pipe.dit.blocks] == [True, False]
    assert auto_checkpoint_blocks(pipe.dit, 9, 160, 96, torch.device("cpu"), compiled=False) == 2  # CPU: all
