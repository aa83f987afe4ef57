import matplotlib.pyplot as plt

stages = ["Visited site", "Signed up", "Activated", "Started trial", "Paid", "Renewed"]
users = [48000, 12500, 7300, 4100, 1650, 1180]
colors = ["#03045e", "#023e8a", "#0077b6", "#0096c7", "#00b4d8", "#48cae4"]

fig, ax = plt.subplots(figsize=(9, 6))
for i, (stage, n, color) in enumerate(zip(stages, users, colors)):
    ax.barh(i, n, left=-n / 2, color=color, height=0.8)
    if n > 10000:
        ax.text(0, i, f"{stage}\n{n:,}", ha="center", va="center", color="white", fontsize=9, fontweight="bold")
    else:
        ax.text(n / 2 + 600, i, f"{stage}: {n:,}", ha="left", va="center", color=color, fontsize=9,
                fontweight="bold")
    if i > 0:
        rate = n / users[i - 1]
        ax.text(-users[0] / 2, i - 0.5, f"{rate:.0%}", va="center", fontsize=9, color="#6c757d")

ax.invert_yaxis()
ax.axis("off")
ax.set_title("Conversion Funnel, Q1 2024", fontsize=14)
plt.savefig("output.png", dpi=150)
