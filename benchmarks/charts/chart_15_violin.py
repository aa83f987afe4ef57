import matplotlib.pyplot as plt
import numpy as np

np.random.seed(0)
departments = ["Engineering", "Sales", "Marketing", "Support", "Finance"]
salaries = [np.random.normal(loc, scale, 200) for loc, scale in
            [(125, 22), (95, 28), (88, 15), (62, 9), (105, 18)]]

fig, ax = plt.subplots(figsize=(10, 5.5))
parts = ax.violinplot(salaries, showmeans=False, showmedians=True, showextrema=False)
colors = ["#6a4c93", "#1982c4", "#8ac926", "#ffca3a", "#ff595e"]
for body, color in zip(parts["bodies"], colors):
    body.set_facecolor(color)
    body.set_edgecolor("black")
    body.set_alpha(0.7)
parts["cmedians"].set_color("black")

ax.set_xticks(np.arange(1, len(departments) + 1))
ax.set_xticklabels(departments)
ax.set_ylabel("Annual salary (thousand USD)")
ax.set_title("Salary Distribution by Department")
ax.yaxis.grid(True, linestyle="--", alpha=0.4)
plt.show()
