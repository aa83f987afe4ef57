import matplotlib.pyplot as plt
import numpy as np

concentration = np.array([0.1, 0.5, 1, 2, 5, 10, 20, 50])
drug_a = np.array([2, 8, 17, 31, 55, 72, 84, 91])
drug_b = np.array([1, 4, 9, 18, 36, 54, 70, 83])
err_a = np.array([1.0, 2.1, 3.0, 3.5, 4.2, 3.8, 3.1, 2.5])
err_b = np.array([0.8, 1.5, 2.4, 3.2, 4.0, 4.4, 3.9, 3.0])

fig, ax = plt.subplots(figsize=(8, 5))
ax.errorbar(concentration, drug_a, yerr=err_a, fmt="-o", color="#0a9396", capsize=4, label="Compound A")
ax.errorbar(concentration, drug_b, yerr=err_b, fmt="--s", color="#ca6702", capsize=4, label="Compound B")
ax.set_xscale("log")
ax.set_xlabel("Concentration (µM)")
ax.set_ylabel("Inhibition (%)")
ax.set_ylim(0, 100)
ax.set_title("Dose-Response Curves (n = 3)")
ax.legend()
ax.grid(True, which="major", alpha=0.4)
plt.tight_layout()
plt.savefig("output.png", dpi=300)
