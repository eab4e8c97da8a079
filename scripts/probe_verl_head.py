"""Peak host-allocator bytes of verl 0.9.1's packed LM-head arithmetic on bf16 logits, in units of N·V·2.

The entropy (``entropy_from_logits``: softmax, logsumexp − Σ softmax·logits), then the log-probs of
``logprobs_from_logits_v2`` (row-wise ``log_softmax`` + gather for bf16), the loss with the entropy at
coefficient 0 (``losses.py`` ppo_loss keeps it in the graph), and the backward. Measured with
``torch.profiler(profile_memory=True)``: every allocation of the CPU allocator, internals of fused ops included
(what MemTracker cannot see). The formulas are written here from their definitions (not imported from verl),
so the probe runs without verl. memory/logits.py ``packed_head_moments`` cites the figures it prints:

    entropy=False grad=False: 1.00   (the logits)
    entropy=False grad=True:  2.00   (logits + saved log_softmax rows; in backward the row grads + their stack)
    entropy=True  grad=False: 3.00   (logits + softmax + logsumexp's internal self - max)
    entropy=True  grad=True:  7.00   (logits + softmax kept, the log-probs' gradient and three entropy gradients)

Run: ``python scripts/probe_verl_head.py`` (a few seconds, CPU).
"""
import torch
from torch.profiler import profile, ProfilerActivity
N, V = 512, 8192
unit = N * V * 2
def entropy(logits):
    pd = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)
def v2(logits, labels):
    rows = [torch.log_softmax(r, dim=-1).gather(-1, l.unsqueeze(-1)).squeeze(-1) for r, l in zip(logits, labels)]
    return torch.stack(rows)
def run(with_entropy, grad):
    h = torch.randn(N, 64, dtype=torch.bfloat16, requires_grad=grad)
    w = torch.randn(V, 64, dtype=torch.bfloat16, requires_grad=grad)
    labels = torch.randint(0, V, (N,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        with torch.set_grad_enabled(grad):
            logits = h @ w.t()
            ent = entropy(logits) if with_entropy else None
            lp = v2(logits, labels)
            del logits
            loss = lp.mean() - (0.0 * ent.mean() if ent is not None else 0)
            del lp, ent
            if grad:
                loss.backward()
    evs = sorted([e for e in p.profiler.kineto_results.events() if e.name() == '[memory]'], key=lambda e: e.start_ns())
    tot = peak = 0
    for e in evs:
        tot += e.nbytes(); peak = max(peak, tot)
    return peak / unit
for ent in (False, True):
    for grad in (False, True):
        print(f'entropy={ent} grad={grad}: peak = {run(ent, grad):.2f} x N*V*2')
