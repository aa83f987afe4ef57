import matplotlib.pyplot as plt
import numpy as np

cities = ["Zurich", "Singapore", "New York", "Geneva", "Hong Kong", "London", "Copenhagen", "Tel Aviv",
          "Paris", "Sydney"]
cost_index = np.array([131.2, 128.0, 100.0, 122.5, 118.4, 96.1, 95.7, 94.3, 90.8, 88.2])
order = np.argsort(cost_index)

fig, ax = plt.subplots(figsize=(8, 6))
y = np.arange(len(cities))
ax.hlines(y, 0, cost_index[order], color="#adb5bd", linewidth=2)
ax.plot(cost_index[order], y, "o", markersize=10, color="#7b2cbf")
ax.set_yticks(y)
ax.set_yticklabels([cities[i] for i in order])
ax.axvline(100, color="#ff9e00", linestyle="--", linewidth=1)
ax.text(100.8, 0.4, "New York = 100", color="#ff9e00", fontsize=9)
ax.set_xlim(80, 140)
ax.set_xlabel("Cost of living index")
ax.set_title("Most Expensive Cities to Live In, 2024")
plt.tight_layout()
plt.show()
