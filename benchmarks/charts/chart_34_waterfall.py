import matplotlib.pyplot as plt

steps = ["Revenue", "COGS", "Gross profit", "R&D", "S&M", "G&A", "Other income", "Net income"]
deltas = [520, -210, None, -95, -80, -42, 18, None]

values, bottoms, colors = [], [], []
running = 0
for d in deltas:
    if d is None:
        values.append(running)
        bottoms.append(0)
        colors.append("#3d5a80")
    else:
        bottoms.append(running if d > 0 else running + d)
        values.append(abs(d))
        colors.append("#2a9d8f" if d > 0 else "#e76f51")
        running += d

fig, ax = plt.subplots(figsize=(10, 5.5))
bars = ax.bar(steps, values, bottom=bottoms, color=colors, edgecolor="black", linewidth=0.5)
for bar, b, v in zip(bars, bottoms, values):
    ax.text(bar.get_x() + bar.get_width() / 2, b + v + 6, f"{v:.0f}", ha="center", fontsize=9)

ax.set_ylabel("USD (millions)")
ax.set_title("FY2023 Income Statement Waterfall")
ax.set_ylim(0, 580)
ax.tick_params(axis="x", rotation=15)
ax.grid(axis="y", alpha=0.3)
ax.set_axisbelow(True)
plt.tight_layout()
plt.savefig("output.png", dpi=200)
