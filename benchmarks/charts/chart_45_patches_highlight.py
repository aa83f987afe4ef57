import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(45)
hours = np.arange(0, 48, 0.25)
cpu = 35 + 10 * np.sin(hours / 3.8) + rng.normal(0, 3, hours.size)
cpu[(hours > 20) & (hours < 23)] += 45

fig, ax = plt.subplots(figsize=(11, 4.5))
ax.plot(hours, cpu, color="#14213d", linewidth=1.2)
ax.axhline(80, color="#fca311", linestyle="--", label="Alert threshold")
incident = mpatches.Rectangle((20, 0), 3, 100, facecolor="#e63946", alpha=0.15, edgecolor="#e63946",
                              linewidth=1.2, label="Incident #4127")
ax.add_patch(incident)
ax.add_patch(mpatches.FancyBboxPatch((28, 88), 12, 8, boxstyle="round,pad=0.4", facecolor="#e5e5e5",
                                     edgecolor="gray"))
ax.text(34, 92, "Root cause: runaway cron job", ha="center", va="center", fontsize=9)
ax.set_xlim(0, 48)
ax.set_ylim(0, 100)
ax.set_xlabel("Hours since deploy")
ax.set_ylabel("CPU utilisation (%)")
ax.set_title("Cluster CPU Utilisation, prod-eu-west-1")
ax.legend(loc="upper left")
plt.tight_layout()
plt.show()
