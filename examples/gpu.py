"""A GPU task: asks Modal for an A10G; on the local backend the same code runs on the CPU.

    redun run examples/gpu.py main

The task reports which device it found, so a run shows where it went.
"""

from redun import task

redun_namespace = "examples.gpu"


@task(executor="modal", gpu="A10G", memory=16384, timeout=1800)
def matmul_trace(size: int) -> dict[str, object]:
    try:
        import torch
    except ImportError:  # Images for this task install torch; a local check may not have it.
        matrix = [[float(i == j) for j in range(size)] for i in range(size)]
        return {"device": "cpu (no torch)", "trace": sum(matrix[i][i] for i in range(size))}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    matrix = torch.eye(size, device=device)
    return {"device": device, "trace": float((matrix @ matrix).trace())}


@task
def main(size: int = 256) -> dict[str, object]:
    return matmul_trace(size)
