import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(11)
class_a = rng.normal(72, 9, 400).clip(0, 100)
class_b = rng.normal(64, 12, 400).clip(0, 100)
bins = np.arange(20, 101, 4)

plt.figure(figsize=(9, 5))
plt.hist(class_a, bins=bins, alpha=0.6, color="#3a86ff", edgecolor="white", label="Morning cohort")
plt.hist(class_b, bins=bins, alpha=0.6, color="#ff006e", edgecolor="white", label="Evening cohort")
plt.axvline(class_a.mean(), color="#3a86ff", linestyle="--", linewidth=1.5)
plt.axvline(class_b.mean(), color="#ff006e", linestyle="--", linewidth=1.5)
plt.xlabel("Final exam score")
plt.ylabel("Number of students")
plt.title("Distribution of Final Exam Scores by Cohort")
plt.legend()
plt.tight_layout()
