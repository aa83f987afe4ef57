import matplotlib.pyplot as plt
import numpy as np

steps = np.logspace(2, 6, 60)
rng = np.random.default_rng(7)
small = 4.2 * steps ** -0.18 + rng.normal(0, 0.01, steps.size)
medium = 3.9 * steps ** -0.21 + rng.normal(0, 0.01, steps.size)
large = 3.7 * steps ** -0.245 + rng.normal(0, 0.01, steps.size)

fig, ax = plt.subplots(figsize=(8, 5))
ax.plot(steps, small, label="125M params", color="#a8dadc")
ax.plot(steps, medium, label="350M params", color="#457b9d")
ax.plot(steps, large, label="1.3B params", color="#1d3557")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("Training steps")
ax.set_ylabel("Validation loss")
ax.set_title("Scaling Curves of Language Models")
ax.grid(True, which="both", linestyle=":", alpha=0.5)
ax.legend()
plt.tight_layout()
