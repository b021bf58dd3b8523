"""Accelerator facts used for MFU: dense bf16 peak TFLOP/s per device, looked up from the device name."""
from __future__ import annotations

PEAK_BF16_TFLOPS = {"A100": 312.0, "A800": 312.0, "H100": 989.0, "H800": 989.0, "H200": 989.0, "GH200": 989.0,
                    "B200": 2250.0, "H20": 148.0, "L40S": 362.0, "L40": 181.0, "A40": 149.7, "A10": 125.0}


def device_peak(name: str | None) -> tuple[str | None, float | None]:
    """(table key, peak TFLOP/s) of a device name such as "NVIDIA H100 80GB HBM3"; (None, None) if unknown.
    The longest key that matches wins (GH200 before H200, L40S before L40)."""
    if not name:
        return None, None
    for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if k in name:
            return k, v
    return None, None


def cuda_peak() -> float | None:
    """Peak of the current CUDA device (None on CPU or an unknown device)."""
    import torch

    return device_peak(torch.cuda.get_device_name())[1] if torch.cuda.is_available() else None
