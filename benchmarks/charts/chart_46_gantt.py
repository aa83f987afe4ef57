import matplotlib.pyplot as plt

tasks = [
    ("Requirements", 0, 3, "#4361ee"),
    ("Design", 2, 4, "#4361ee"),
    ("Backend API", 5, 8, "#3a0ca3"),
    ("Frontend", 7, 7, "#3a0ca3"),
    ("Integration", 13, 3, "#7209b7"),
    ("QA & testing", 14, 5, "#f72585"),
    ("Beta release", 19, 2, "#f72585"),
    ("Launch", 21, 1, "#06d6a0"),
]

fig, ax = plt.subplots(figsize=(11, 5))
for i, (_, start, duration, color) in enumerate(tasks):
    ax.broken_barh([(start, duration)], (i - 0.35, 0.7), facecolors=color)
    ax.text(start + duration + 0.2, i, f"{duration} wk", va="center", fontsize=8, color="#495057")

ax.set_yticks(range(len(tasks)))
ax.set_yticklabels([t[0] for t in tasks])
ax.invert_yaxis()
ax.set_xlim(0, 24)
ax.set_xticks(range(0, 25, 2))
ax.set_xlabel("Week")
ax.axvline(10, color="#e63946", linestyle="--", linewidth=1.2)
ax.text(10.2, 7.2, "today", color="#e63946")
ax.grid(axis="x", alpha=0.3)
ax.set_title("Project Roadmap: Mobile App v2")
plt.tight_layout()
