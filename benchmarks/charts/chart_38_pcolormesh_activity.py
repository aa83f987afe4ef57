import matplotlib.pyplot as plt
import numpy as np

days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
hours = np.arange(24)
rng = np.random.default_rng(12)
base = np.exp(-((hours - 13) ** 2) / 30) + 0.6 * np.exp(-((hours - 20) ** 2) / 8)
activity = np.array([base * (1.0 if d < 5 else 0.7) for d in range(7)]) * 1000
activity += rng.normal(0, 40, activity.shape)

fig, ax = plt.subplots(figsize=(12, 4))
mesh = ax.pcolormesh(hours, np.arange(7), activity, cmap="YlGnBu", shading="nearest")
ax.set_yticks(np.arange(7))
ax.set_yticklabels(days)
ax.set_xticks(hours[::2])
ax.set_xticklabels([f"{h:02d}:00" for h in hours[::2]], rotation=45)
ax.invert_yaxis()
fig.colorbar(mesh, ax=ax, label="Messages sent")
ax.set_title("Chat Activity by Weekday and Hour")
plt.tight_layout()
