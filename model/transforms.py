"""Monotonic rational-quadratic splines (Durkan et al., "Neural Spline Flows", 2019), the
invertible elementwise map inside the stochastic duration predictor's ConvFlow layers.

Inside [-tail_bound, tail_bound] the map is a K-bin rational-quadratic spline; outside it is the
identity ("linear tails"), with boundary derivatives pinned to 1 so the two join smoothly.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def piecewise_rational_quadratic_transform(inputs, unnormalized_widths, unnormalized_heights,
                                           unnormalized_derivatives, inverse=False, tails=None,
                                           tail_bound=1.0, min_bin_width=DEFAULT_MIN_BIN_WIDTH,
                                           min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
                                           min_derivative=DEFAULT_MIN_DERIVATIVE):
    """inputs [...]; widths/heights [..., K]; derivatives [..., K-1] with tails, [..., K+1] without.
    Returns (outputs [...], log|d outputs / d inputs| [...])."""
    kwargs = dict(inverse=inverse, min_bin_width=min_bin_width, min_bin_height=min_bin_height,
                  min_derivative=min_derivative)
    if tails is None:
        return rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights,
                                         unnormalized_derivatives, **kwargs)
    return unconstrained_rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights,
                                                   unnormalized_derivatives, tails=tails,
                                                   tail_bound=tail_bound, **kwargs)


def searchsorted(bin_locations: torch.Tensor, inputs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Index of the bin holding each input. The last edge is nudged up by eps so an input exactly
    on the right boundary falls in the last bin. (Upstream nudges it in place; we copy.)"""
    bin_locations = torch.cat([bin_locations[..., :-1], bin_locations[..., -1:] + eps], dim=-1)
    return torch.sum(inputs[..., None] >= bin_locations, dim=-1) - 1


def unconstrained_rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights,
                                            unnormalized_derivatives, inverse=False, tails="linear",
                                            tail_bound=1.0, min_bin_width=DEFAULT_MIN_BIN_WIDTH,
                                            min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
                                            min_derivative=DEFAULT_MIN_DERIVATIVE):
    if tails != "linear":
        raise RuntimeError(f"{tails} tails are not implemented.")
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    outputs = torch.zeros_like(inputs)
    logabsdet = torch.zeros_like(inputs)

    # Boundary derivatives: softplus(constant) + min_derivative == 1, matching the identity tails.
    constant = math.log(math.exp(1 - min_derivative) - 1)
    unnormalized_derivatives = F.pad(unnormalized_derivatives, pad=(1, 1))
    unnormalized_derivatives[..., 0] = constant
    unnormalized_derivatives[..., -1] = constant

    outputs[~inside] = inputs[~inside]
    logabsdet[~inside] = 0
    outputs[inside], logabsdet[inside] = rational_quadratic_spline(
        inputs[inside], unnormalized_widths[inside, :], unnormalized_heights[inside, :],
        unnormalized_derivatives[inside, :], inverse=inverse, left=-tail_bound, right=tail_bound,
        bottom=-tail_bound, top=tail_bound, min_bin_width=min_bin_width,
        min_bin_height=min_bin_height, min_derivative=min_derivative)
    return outputs, logabsdet


def _bins(unnormalized: torch.Tensor, min_size: float, lo: float, hi: float):
    """Softmax bin sizes with a floor, as cumulative edges [..., K+1] on [lo, hi] and sizes [..., K]."""
    num_bins = unnormalized.shape[-1]
    sizes = min_size + (1 - min_size * num_bins) * F.softmax(unnormalized, dim=-1)
    edges = F.pad(torch.cumsum(sizes, dim=-1), pad=(1, 0), mode="constant", value=0.0)
    edges = (hi - lo) * edges + lo
    edges[..., 0] = lo
    edges[..., -1] = hi  # exact ends despite float rounding in the cumsum
    return edges, edges[..., 1:] - edges[..., :-1]


def rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights,
                              unnormalized_derivatives, inverse=False, left=0.0, right=1.0,
                              bottom=0.0, top=1.0, min_bin_width=DEFAULT_MIN_BIN_WIDTH,
                              min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
                              min_derivative=DEFAULT_MIN_DERIVATIVE):
    if inputs.numel() and (torch.min(inputs) < left or torch.max(inputs) > right):
        raise ValueError("Input to a transform is not within its domain")
    num_bins = unnormalized_widths.shape[-1]
    if min_bin_width * num_bins > 1.0:
        raise ValueError("Minimal bin width too large for the number of bins")
    if min_bin_height * num_bins > 1.0:
        raise ValueError("Minimal bin height too large for the number of bins")

    cumwidths, widths = _bins(unnormalized_widths, min_bin_width, left, right)
    cumheights, heights = _bins(unnormalized_heights, min_bin_height, bottom, top)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)  # [..., K+1], > 0

    bin_idx = searchsorted(cumheights if inverse else cumwidths, inputs)[..., None]

    def pick(t):
        return t.gather(-1, bin_idx)[..., 0]

    input_cumwidths, input_bin_widths = pick(cumwidths), pick(widths)
    input_cumheights, input_heights = pick(cumheights), pick(heights)
    input_delta = pick(heights / widths)  # the bin's slope
    d0, d1 = pick(derivatives), pick(derivatives[..., 1:])  # derivatives at the bin's two knots
    curvature = d0 + d1 - 2 * input_delta

    if inverse:
        # Solve the rational quadratic for theta: a theta^2 + b theta + c = 0.
        dy = inputs - input_cumheights
        a = dy * curvature + input_heights * (input_delta - d0)
        b = input_heights * d0 - dy * curvature
        c = -input_delta * dy
        discriminant = b.pow(2) - 4 * a * c
        assert (discriminant >= 0).all()
        theta = (2 * c) / (-b - torch.sqrt(discriminant))  # the numerically stable root
        outputs = theta * input_bin_widths + input_cumwidths
    else:
        theta = (inputs - input_cumwidths) / input_bin_widths

    theta_one_minus_theta = theta * (1 - theta)
    denominator = input_delta + curvature * theta_one_minus_theta
    derivative_numerator = input_delta.pow(2) * (
        d1 * theta.pow(2) + 2 * input_delta * theta_one_minus_theta + d0 * (1 - theta).pow(2))
    logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    if inverse:
        return outputs, -logabsdet
    numerator = input_heights * (input_delta * theta.pow(2) + d0 * theta_one_minus_theta)
    return input_cumheights + numerator / denominator, logabsdet
