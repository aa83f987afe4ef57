import matplotlib.pyplot as plt

languages = ["Python", "JavaScript", "Java", "C#", "C++", "TypeScript", "PHP", "Go", "Rust", "Kotlin"]
share = [28.1, 17.9, 15.8, 7.0, 6.8, 6.1, 4.9, 2.1, 1.6, 1.5]

languages = languages[::-1]
share = share[::-1]

fig, ax = plt.subplots(figsize=(8, 6))
bars = ax.barh(languages, share, color="#2a9d8f", height=0.65)
bars[-1].set_color("#e76f51")

for bar in bars:
    width = bar.get_width()
    ax.text(width + 0.3, bar.get_y() + bar.get_height() / 2, f"{width:.1f}%", va="center", fontsize=9)

ax.set_xlabel("Share of tutorial searches (%)")
ax.set_title("Most Popular Programming Languages, 2024")
ax.set_xlim(0, 32)
for side in ("top", "right"):
    ax.spines[side].set_visible(False)
plt.tight_layout()
plt.savefig("output.png", dpi=100)
