import matplotlib.pyplot as plt
import numpy as np

continents = ["Asia", "Europe", "Americas", "Africa & Oceania"]
continent_totals = [46, 27, 21, 6]
countries = [22, 14, 10, 12, 9, 6, 13, 8, 4, 2]
inner_colors = ["#e63946", "#457b9d", "#2a9d8f", "#e9c46a"]
outer_colors = ["#f28482", "#f5cac3", "#fde2e4", "#a8dadc", "#cde4ef", "#bde0fe", "#95d5b2", "#d8f3dc",
                "#ffe8a3", "#fff3c4"]

fig, ax = plt.subplots(figsize=(7, 7))
size = 0.3
inner, _ = ax.pie(continent_totals, radius=1 - size, colors=inner_colors,
                  wedgeprops={"width": size, "edgecolor": "white"})
ax.pie(countries, radius=1, colors=outer_colors, wedgeprops={"width": size, "edgecolor": "white"},
       autopct="%d%%", pctdistance=0.86, textprops={"fontsize": 8})
ax.set(aspect="equal")
ax.legend(inner, continents, loc="lower center", bbox_to_anchor=(0.5, -0.08), ncol=4, frameon=False)
ax.set_title("Tourist Arrivals by Region and Top Destination (%)")
total = np.sum(countries)
ax.text(0, 0, f"{total}%", ha="center", va="center", fontsize=9, color="gray")
plt.show()
