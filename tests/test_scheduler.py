"""DDADScheduler against diffusers' DDIMScheduler, an oracle noise predictor, and method.md's formulas."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from ddad_hub import DDADScheduler


def _ddim(eta_steps: int = 40) -> DDIMScheduler:
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         set_alpha_to_one=True, clip_sample=False)
    ddim.set_timesteps(eta_steps)  # step ratio 1000 / 40 = 25 = our skip
    return ddim


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("t", [975, 225, 100, 25, 0])
def test_unconditioned_step_matches_ddim(eta, t):
    ours = DDADScheduler(skip=25)
    g = torch.Generator().manual_seed(t)
    sample, eps, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    expected = _ddim().step(eps, t, sample, eta=eta, variance_noise=noise).prev_sample
    got = ours.step(eps, t, sample, w=0, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_conditioning_follows_method_md():
    s = DDADScheduler()
    g = torch.Generator().manual_seed(0)
    x_t, e, y = (torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t, prev, w = 200, 175, 3.0
    a_t, a_p = s.alphas_cumprod[t], s.alphas_cumprod[prev]
    y_t = a_t.sqrt() * y + (1 - a_t).sqrt() * e
    e_hat = e - w * (1 - a_t).sqrt() * (y_t - x_t)
    x0 = (x_t - (1 - a_t).sqrt() * e_hat) / a_t.sqrt()
    expected = a_p.sqrt() * x0 + (1 - a_p).sqrt() * e_hat  # eta = 0: c1 = 0, c2 = sqrt(1 - abar_prev)
    out = s.step(e, t, x_t, target=y, w=w, eta=0.0, prev_timestep=prev)
    torch.testing.assert_close(out.prev_sample, expected)
    torch.testing.assert_close(out.pred_original_sample, x0)
    with pytest.raises(ValueError, match="target"):
        s.step(e, t, x_t, w=1.0)


@pytest.mark.parametrize("w", [0.0, 4.0])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("noise_free", [False, True])
def test_oracle_noise_predictor_reconstructs_the_image(w, eta, noise_free):
    s = DDADScheduler()
    s.set_timesteps(start_step=250, skip=25)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    if noise_free:
        x = s.scale_noise_free(x0, s.start_step)
    else:
        x = s.add_noise(x0, torch.randn(x0.shape, generator=g, dtype=torch.float64), s.start_step)
    recon = None
    for t in s.timesteps:
        a = s.alphas_cumprod[t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that explains x_t given the clean image
        x, recon = s.step(eps, t, x, target=x0, w=w, eta=eta, generator=g, return_dict=False)
    torch.testing.assert_close(recon, x0, atol=1e-4, rtol=0)


def test_set_timesteps_and_starts():
    s = DDADScheduler()
    s.set_timesteps(start_step=250, skip=25)
    assert s.timesteps.tolist() == list(range(225, -1, -25)) and s.num_inference_steps == 10
    s.set_timesteps(start_step=400, skip=40)
    assert s.timesteps.tolist()[0] == 360 and s.timesteps.tolist()[-1] == 0
    s.set_timesteps(start_step=250, skip=60)  # a skip that does not divide: still ends on t = 0
    assert s.timesteps.tolist() == [190, 130, 70, 10, 0]
    for bad in ({"start_step": 0}, {"start_step": 1000}, {"start_step": 100, "skip": 0},
                {"start_step": 100, "skip": 101}):
        with pytest.raises(ValueError):
            s.set_timesteps(**bad)
    x0, n = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    a = s.alphas_cumprod[100].float()
    torch.testing.assert_close(s.add_noise(x0, n, 100), a.sqrt() * x0 + (1 - a).sqrt() * n)
    torch.testing.assert_close(s.scale_noise_free(x0, 100), a.sqrt() * x0)
    per_sample = s.add_noise(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0, 999]))
    assert per_sample[0].mean() > per_sample[1].mean()
    assert torch.isclose(s.alphas_cumprod[0], torch.tensor(1 - 1e-4, dtype=torch.float64))


def test_config_round_trip(tmp_path):
    s = DDADScheduler(start_step=400, skip=40, w=3.0, eta=0.5)
    s.save_pretrained(tmp_path)
    again = DDADScheduler.from_pretrained(tmp_path)
    assert again.config.w == 3.0 and again.config.eta == 0.5
    assert again.timesteps.tolist() == s.timesteps.tolist()
