import matplotlib.pyplot as plt

countries = ["Norway", "Germany", "Canada", "Japan", "Brazil", "India", "Nigeria", "Kenya"]
internet_2010 = [93, 82, 80, 78, 41, 8, 11, 7]
internet_2022 = [99, 93, 94, 90, 81, 46, 55, 29]

fig, ax = plt.subplots(figsize=(9, 5.5))
for i, (a, b) in enumerate(zip(internet_2010, internet_2022)):
    ax.plot([a, b], [i, i], color="#ced4da", linewidth=4, zorder=1)
ax.scatter(internet_2010, range(len(countries)), color="#ff7d00", s=80, zorder=2, label="2010")
ax.scatter(internet_2022, range(len(countries)), color="#15616d", s=80, zorder=2, label="2022")

ax.set_yticks(range(len(countries)))
ax.set_yticklabels(countries)
ax.invert_yaxis()
ax.set_xlim(0, 105)
ax.set_xlabel("Population using the internet (%)")
ax.set_title("Internet Adoption, 2010 vs 2022")
ax.legend(loc="lower right")
ax.grid(axis="x", alpha=0.3)
plt.tight_layout()
