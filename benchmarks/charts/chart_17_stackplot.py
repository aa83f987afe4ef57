import matplotlib.pyplot as plt
import numpy as np

quarters = np.arange(12)
labels = [f"Q{q % 4 + 1}\n{2021 + q // 4}" for q in quarters]
compute = np.array([4.1, 4.5, 4.9, 5.6, 6.0, 6.5, 7.1, 7.9, 8.4, 9.0, 9.8, 10.7])
storage = np.array([2.0, 2.1, 2.3, 2.5, 2.6, 2.8, 3.0, 3.1, 3.3, 3.5, 3.6, 3.9])
databases = np.array([1.2, 1.4, 1.5, 1.7, 1.9, 2.1, 2.4, 2.6, 2.9, 3.1, 3.4, 3.8])
ai_services = np.array([0.2, 0.3, 0.3, 0.4, 0.6, 0.8, 1.1, 1.6, 2.2, 2.9, 3.7, 4.6])

fig, ax = plt.subplots(figsize=(10, 5.5))
ax.stackplot(quarters, compute, storage, databases, ai_services,
             labels=["Compute", "Storage", "Databases", "AI services"],
             colors=["#003f5c", "#58508d", "#bc5090", "#ffa600"], alpha=0.9)
ax.set_xticks(quarters)
ax.set_xticklabels(labels, fontsize=8)
ax.set_xlim(0, 11)
ax.set_ylabel("Revenue (billion USD)")
ax.set_title("Cloud Revenue by Segment")
ax.legend(loc="upper left")
plt.tight_layout()
plt.show()
