import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(21)
days = np.arange(1, 31)
visitors = 1200 + 300 * np.sin(days / 4) + rng.normal(0, 80, days.size)
channels = ["Organic", "Paid", "Social", "Email", "Referral"]
channel_share = [42, 23, 17, 11, 7]
session_length = rng.gamma(2.0, 2.5, 800)
bounce = rng.uniform(20, 70, 40)
conversion = 6 - 0.06 * bounce + rng.normal(0, 0.6, 40)

fig, axes = plt.subplots(2, 2, figsize=(11, 8))
axes[0, 0].plot(days, visitors, color="#0077b6", marker=".", linewidth=1.5)
axes[0, 0].set_title("Daily Visitors (June)")
axes[0, 0].set_xlabel("Day")

axes[0, 1].bar(channels, channel_share, color="#00b4d8")
axes[0, 1].set_title("Traffic by Channel (%)")

axes[1, 0].hist(session_length, bins=30, color="#90e0ef", edgecolor="#0077b6")
axes[1, 0].set_title("Session Length (min)")

axes[1, 1].scatter(bounce, conversion, color="#03045e", alpha=0.7)
axes[1, 1].set_title("Bounce Rate vs Conversion")
axes[1, 1].set_xlabel("Bounce rate (%)")
axes[1, 1].set_ylabel("Conversion (%)")

fig.suptitle("Website Analytics Dashboard", fontsize=15, fontweight="bold")
fig.tight_layout()
plt.show()
