import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

age_groups = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
streaming = np.array([61, 55, 44, 33, 24, 15])
cable = np.array([9, 14, 22, 31, 40, 52])
social = np.array([30, 31, 34, 36, 36, 33])
total = streaming + cable + social

fig, ax = plt.subplots(figsize=(9, 5))
ax.bar(age_groups, streaming / total, color="#7209b7", label="Streaming")
ax.bar(age_groups, cable / total, bottom=streaming / total, color="#4895ef", label="Cable TV")
ax.bar(age_groups, social / total, bottom=(streaming + cable) / total, color="#4cc9f0", label="Social video")
ax.yaxis.set_major_formatter(PercentFormatter(1.0))
ax.set_ylim(0, 1)
ax.set_xlabel("Age group")
ax.set_title("Where People Watch Video, by Age", pad=30)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.12), ncol=3, frameon=False)
plt.tight_layout()
plt.savefig("output.png", dpi=150)
