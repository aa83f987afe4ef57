import matplotlib.gridspec as gridspec
import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(13)
height = rng.normal(171, 9, 500)
weight = 0.9 * (height - 100) + rng.normal(0, 8, 500)

fig = plt.figure(figsize=(8, 8))
gs = gridspec.GridSpec(4, 4, figure=fig, hspace=0.05, wspace=0.05)
ax_main = fig.add_subplot(gs[1:, :3])
ax_top = fig.add_subplot(gs[0, :3], sharex=ax_main)
ax_right = fig.add_subplot(gs[1:, 3], sharey=ax_main)

ax_main.scatter(height, weight, s=12, alpha=0.5, color="#5f0f40")
ax_main.set_xlabel("Height (cm)")
ax_main.set_ylabel("Weight (kg)")
ax_top.hist(height, bins=30, color="#9a031e", alpha=0.8)
ax_right.hist(weight, bins=30, orientation="horizontal", color="#fb8b24", alpha=0.8)
ax_top.tick_params(labelbottom=False)
ax_right.tick_params(labelleft=False)
ax_top.set_title("Height and Weight of 500 Adults")

plt.savefig("output.png", dpi=100)
