"""A fixed corpus of realistic STEM matplotlib scripts, as a model would write them for STEM2Code-style images.

Four families, as in the benchmark brief: charts, function plots, geometry with patches and labels, 3-D solids.
Every script is self-contained (numpy + matplotlib only), deterministic (seeded), ends with ``plt.show()`` like
model output does, and renders in well under a second in a warm process.

Importable by tests and benchmarks::

    from benchmarks.stem_corpus import CORPUS      # dict[name, code], fixed order
    from benchmarks.stem_corpus import FAMILIES    # dict[name, family]
"""

from __future__ import annotations

_CHARTS = {
    "bar_grouped": """
import numpy as np
import matplotlib.pyplot as plt

labels = ["2019", "2020", "2021", "2022", "2023"]
boys = [23, 31, 28, 35, 40]
girls = [25, 29, 33, 37, 38]
x = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(6, 4))
b1 = ax.bar(x - 0.18, boys, 0.36, label="Boys", color="#4472c4")
b2 = ax.bar(x + 0.18, girls, 0.36, label="Girls", color="#ed7d31")
ax.bar_label(b1, padding=2)
ax.bar_label(b2, padding=2)
ax.set_xticks(x, labels)
ax.set_ylabel("Number of students")
ax.set_title("Students joining the maths club")
ax.legend()
ax.set_ylim(0, 48)
plt.tight_layout()
plt.show()
""",
    "pie_budget": """
import matplotlib.pyplot as plt

parts = [35, 25, 20, 12, 8]
names = ["Rent", "Food", "Transport", "Savings", "Other"]
colors = ["#5b9bd5", "#ed7d31", "#a5a5a5", "#ffc000", "#70ad47"]
fig, ax = plt.subplots(figsize=(5, 5))
ax.pie(parts, labels=names, colors=colors, autopct="%1.0f%%", startangle=90,
       wedgeprops={"edgecolor": "white"})
ax.set_title("Monthly budget")
ax.axis("equal")
plt.show()
""",
    "histogram_normal": """
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(0)
scores = rng.normal(72, 9, 400)
fig, ax = plt.subplots(figsize=(6, 4))
ax.hist(scores, bins=range(40, 105, 5), color="#9dc3e6", edgecolor="black")
ax.axvline(scores.mean(), color="red", linestyle="--", label=f"mean = {scores.mean():.1f}")
ax.set_xlabel("Score")
ax.set_ylabel("Frequency")
ax.set_title("Test scores of 400 students")
ax.legend()
plt.show()
""",
    "scatter_regression": """
import numpy as np
import matplotlib.pyplot as plt

rng = np.random.default_rng(1)
x = np.linspace(0, 10, 30)
y = 2.1 * x + 3 + rng.normal(0, 2, x.size)
k, b = np.polyfit(x, y, 1)
fig, ax = plt.subplots(figsize=(6, 4))
ax.scatter(x, y, color="tab:blue", zorder=3, label="measurements")
ax.plot(x, k * x + b, color="tab:red", label=f"y = {k:.2f}x + {b:.2f}")
ax.set_xlabel("Time (s)")
ax.set_ylabel("Distance (m)")
ax.grid(True, alpha=0.3)
ax.legend(loc="upper left")
plt.show()
""",
}

_FUNCTIONS = {
    "trig_functions": r"""
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(-2 * np.pi, 2 * np.pi, 400)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(x, np.sin(x), label=r"$y=\sin x$", color="blue")
ax.plot(x, np.cos(x), label=r"$y=\cos x$", color="green", linestyle="--")
ax.axhline(0, color="black", linewidth=0.8)
ax.axvline(0, color="black", linewidth=0.8)
ax.set_xticks([-2 * np.pi, -np.pi, 0, np.pi, 2 * np.pi])
ax.set_xticklabels([r"$-2\pi$", r"$-\pi$", "0", r"$\pi$", r"$2\pi$"])
ax.set_ylim(-1.5, 1.5)
ax.legend(loc="upper right")
ax.set_title("Sine and cosine")
plt.show()
""",
    "cubic_roots": """
import numpy as np
import matplotlib.pyplot as plt

f = lambda x: x**3 - 3 * x**2 - x + 3
x = np.linspace(-1.8, 3.8, 300)
fig, ax = plt.subplots(figsize=(6, 5))
ax.plot(x, f(x), color="purple", linewidth=2)
for r in (-1, 1, 3):
    ax.plot(r, 0, "o", color="red")
    ax.annotate(f"({r}, 0)", (r, 0), textcoords="offset points", xytext=(5, 8))
ax.spines["left"].set_position("zero")
ax.spines["bottom"].set_position("zero")
ax.spines["right"].set_visible(False)
ax.spines["top"].set_visible(False)
ax.set_title(r"$f(x) = x^3 - 3x^2 - x + 3$")
plt.show()
""",
    "exp_log_inverse": r"""
import numpy as np
import matplotlib.pyplot as plt

x1 = np.linspace(-3, 2, 200)
x2 = np.linspace(0.05, 7, 200)
fig, ax = plt.subplots(figsize=(5, 5))
ax.plot(x1, np.exp(x1), color="tab:orange", label=r"$y=e^x$")
ax.plot(x2, np.log(x2), color="tab:blue", label=r"$y=\ln x$")
ax.plot([-3, 7], [-3, 7], color="gray", linestyle=":", label="$y=x$")
ax.set_xlim(-3, 7)
ax.set_ylim(-3, 7)
ax.set_aspect("equal")
ax.grid(True, linestyle="--", alpha=0.4)
ax.legend()
plt.show()
""",
    "projectile": """
import numpy as np
import matplotlib.pyplot as plt

g = 9.8
fig, ax = plt.subplots(figsize=(7, 4))
for angle, c in zip((30, 45, 60), ("tab:red", "tab:green", "tab:blue")):
    th = np.radians(angle)
    v = 20.0
    t = np.linspace(0, 2 * v * np.sin(th) / g, 100)
    ax.plot(v * np.cos(th) * t, v * np.sin(th) * t - 0.5 * g * t**2, color=c, label=f"{angle} deg")
ax.set_xlabel("x (m)")
ax.set_ylabel("y (m)")
ax.set_title("Projectile paths, v0 = 20 m/s")
ax.set_ylim(bottom=0)
ax.legend()
plt.show()
""",
}

_GEOMETRY = {
    "triangle_angles": """
import numpy as np
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon, Arc

A, B, C = np.array([0, 0]), np.array([6, 0]), np.array([2, 4])
fig, ax = plt.subplots(figsize=(6, 5))
ax.add_patch(Polygon([A, B, C], closed=True, fill=False, edgecolor="black", linewidth=2))
for name, P, off in (("A", A, (-0.4, -0.3)), ("B", B, (0.15, -0.3)), ("C", C, (-0.1, 0.2))):
    ax.text(P[0] + off[0], P[1] + off[1], name, fontsize=14)
ax.add_patch(Arc(A, 1.2, 1.2, theta1=0, theta2=63.4, color="red"))
ax.text(0.7, 0.3, "63.4°", color="red")
ax.add_patch(Arc(B, 1.2, 1.2, theta1=135, theta2=180, color="blue"))
ax.text(4.9, 0.25, "45°", color="blue")
ax.plot([C[0], C[0]], [0, C[1]], linestyle="--", color="gray")
ax.text(2.1, 1.8, "h = 4", color="gray")
ax.set_xlim(-1, 7)
ax.set_ylim(-1, 5)
ax.set_aspect("equal")
ax.axis("off")
plt.show()
""",
    "circle_inscribed_hexagon": """
import numpy as np
import matplotlib.pyplot as plt
from matplotlib.patches import Circle, RegularPolygon

fig, ax = plt.subplots(figsize=(5, 5))
ax.add_patch(Circle((0, 0), 2, fill=False, edgecolor="navy", linewidth=2))
ax.add_patch(RegularPolygon((0, 0), 6, radius=2, orientation=np.pi / 6, fill=True,
                            facecolor="#ffe699", edgecolor="darkorange", linewidth=1.5))
ax.plot(0, 0, "ko")
ax.text(0.08, -0.25, "O")
ax.plot([0, 2], [0, 0], color="black")
ax.text(0.9, 0.1, "r = 2")
for k in range(6):
    a = np.pi / 3 * k
    ax.text(2.25 * np.cos(a), 2.25 * np.sin(a), chr(65 + k), ha="center", va="center")
ax.set_xlim(-2.6, 2.6)
ax.set_ylim(-2.6, 2.6)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title("Regular hexagon inscribed in a circle")
plt.show()
""",
    "coordinate_rectangle": """
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle, FancyArrowPatch

fig, ax = plt.subplots(figsize=(6, 5))
ax.add_patch(Rectangle((1, 1), 4, 2.5, facecolor="#c5e0b4", edgecolor="green", linewidth=2, alpha=0.8))
ax.add_patch(FancyArrowPatch((1, 0.5), (5, 0.5), arrowstyle="<->", mutation_scale=12))
ax.text(3, 0.15, "4 cm", ha="center")
ax.add_patch(FancyArrowPatch((5.5, 1), (5.5, 3.5), arrowstyle="<->", mutation_scale=12))
ax.text(5.65, 2.25, "2.5 cm", va="center")
ax.plot([1, 5], [1, 3.5], color="red", linestyle="--")
ax.text(2.6, 2.4, "d", color="red", fontsize=13)
ax.set_xlim(0, 7)
ax.set_ylim(0, 4.5)
ax.set_aspect("equal")
ax.grid(True, alpha=0.3)
ax.set_title("Rectangle and its diagonal")
plt.show()
""",
    "resistor_circuit": """
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle, Circle

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot([0, 0, 6, 6, 0], [0, 3, 3, 0, 0], color="black", linewidth=1.5)
for x0, name in ((1.5, "R1 = 4Ω"), (3.8, "R2 = 6Ω")):
    ax.add_patch(Rectangle((x0, 2.8), 0.9, 0.4, facecolor="white", edgecolor="black", zorder=3))
    ax.text(x0 + 0.45, 3.4, name, ha="center")
ax.add_patch(Circle((0, 1.5), 0.35, facecolor="white", edgecolor="black", zorder=3))
ax.text(0, 1.5, "V", ha="center", va="center")
ax.text(-0.9, 1.5, "12 V", va="center")
ax.annotate("", xy=(4.5, 0.2), xytext=(2.5, 0.2), arrowprops={"arrowstyle": "->", "color": "red"})
ax.text(3.5, 0.35, "I", color="red", ha="center")
ax.set_xlim(-1.5, 7)
ax.set_ylim(-0.8, 4)
ax.set_aspect("equal")
ax.axis("off")
plt.show()
""",
}

_SOLIDS = {
    "cube_wireframe": """
import itertools
import numpy as np
import matplotlib.pyplot as plt

fig = plt.figure(figsize=(5, 5))
ax = fig.add_subplot(111, projection="3d")
pts = np.array(list(itertools.product([0, 2], repeat=3)))
for p, q in itertools.combinations(pts, 2):
    if np.sum(np.abs(p - q)) == 2:
        hidden = (p == 0).sum() >= 2 and (q == 0).sum() >= 2 and p[1] == 0 and q[1] == 0
        ax.plot(*zip(p, q), color="black", linestyle="--" if hidden else "-")
for p, name in zip(pts, "ABCDEFGH"):
    ax.text(*(p + 0.1), name)
ax.plot([0, 2], [0, 2], [0, 2], color="red")
ax.set_box_aspect((1, 1, 1))
ax.set_axis_off()
ax.view_init(elev=20, azim=-60)
plt.show()
""",
    "cylinder_surface": """
import numpy as np
import matplotlib.pyplot as plt

fig = plt.figure(figsize=(5, 6))
ax = fig.add_subplot(111, projection="3d")
theta = np.linspace(0, 2 * np.pi, 40)
z = np.linspace(0, 3, 12)
T, Z = np.meshgrid(theta, z)
ax.plot_surface(np.cos(T), np.sin(T), Z, color="#9dc3e6", alpha=0.6, edgecolor="none")
ax.plot(np.cos(theta), np.sin(theta), 0, color="navy")
ax.plot(np.cos(theta), np.sin(theta), 3, color="navy")
ax.plot([0, 1], [0, 0], [3, 3], color="red")
ax.text(0.4, 0, 3.2, "r = 1", color="red")
ax.plot([1.3, 1.3], [0, 0], [0, 3], color="black", linestyle=":")
ax.text(1.4, 0, 1.5, "h = 3")
ax.set_box_aspect((1, 1, 1.4))
ax.set_axis_off()
plt.show()
""",
    "pyramid_poly3d": """
import numpy as np
import matplotlib.pyplot as plt
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

base = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]], dtype=float)
apex = np.array([1, 1, 2.5])
faces = [[base[i], base[(i + 1) % 4], apex] for i in range(4)] + [list(base)]
fig = plt.figure(figsize=(5, 5))
ax = fig.add_subplot(111, projection="3d")
ax.add_collection3d(Poly3DCollection(faces, facecolors=["#f4b183", "#ffd966", "#a9d18e", "#9dc3e6", "#d9d9d9"],
                                     edgecolors="black", alpha=0.7))
for p, name in zip(list(base) + [apex], "ABCDP"):
    ax.text(*(p + np.array([0.05, 0.05, 0.1])), name)
ax.plot([1, 1], [1, 1], [0, 2.5], color="red", linestyle="--")
ax.set_xlim(0, 2)
ax.set_ylim(0, 2)
ax.set_zlim(0, 2.5)
ax.set_axis_off()
ax.view_init(elev=18, azim=30)
plt.show()
""",
    "saddle_surface": """
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(-2, 2, 30)
X, Y = np.meshgrid(x, x)
Z = X**2 - Y**2
fig = plt.figure(figsize=(6, 5))
ax = fig.add_subplot(111, projection="3d")
surf = ax.plot_surface(X, Y, Z, cmap="coolwarm", linewidth=0)
fig.colorbar(surf, shrink=0.6)
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_zlabel("z")
ax.set_title(r"$z = x^2 - y^2$")
plt.show()
""",
}

FAMILIES: dict[str, str] = {}
CORPUS: dict[str, str] = {}
for _family, _scripts in (
    ("chart", _CHARTS),
    ("function", _FUNCTIONS),
    ("geometry", _GEOMETRY),
    ("solid", _SOLIDS),
):
    for _name, _code in _scripts.items():
        CORPUS[_name] = _code.strip() + "\n"
        FAMILIES[_name] = _family
