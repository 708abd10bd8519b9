"""A seeded, realistic-looking e-commerce catalog and query log for the demo.

The demo must run for someone who has only this repository, so its data is generated: products
with categories, brands, colours, sizes, materials, model numbers and prices; titles written the
way marketplaces write them; and shopper queries of every specificity, from "shoes" to
"nike pegasus 41 black size 10", each paired with products and a graded relevance label:

* 2 (exact): the product satisfies every attribute the query names;
* 1 (partial): same category, but an attribute the query names differs;
* 0 (irrelevant): another category.

Labels are skewed as real click logs are (mostly partial matches, few exact ones), and the train
set is small on purpose: it is the scarce-sample situation augmentation is for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

CATEGORIES: dict[str, dict[str, Any]] = {
    "running shoes": {"brands": ["Nike", "Adidas", "Asics", "Brooks", "Hoka", "New Balance"],
                      "lines": ["Pegasus", "Ultraboost", "Gel-Kayano", "Ghost", "Clifton", "Fresh Foam"],
                      "colors": ["black", "white", "blue", "red", "grey"], "sizes": ["8", "9", "10", "11", "12"],
                      "materials": ["mesh", "knit"], "price": (60, 180), "unit": "size"},
    "headphones": {"brands": ["Sony", "Bose", "Apple", "Sennheiser", "JBL", "Anker"],
                   "lines": ["WH-1000XM5", "QuietComfort Ultra", "AirPods Max", "Momentum 4", "Tune 770NC", "Q45"],
                   "colors": ["black", "silver", "white", "blue"], "sizes": ["over-ear", "on-ear"],
                   "materials": ["plastic", "aluminium"], "price": (40, 550), "unit": "fit"},
    "smartphones": {"brands": ["Apple", "Samsung", "Google", "Xiaomi", "OnePlus", "Motorola"],
                    "lines": ["iPhone 16", "Galaxy S25", "Pixel 9", "Redmi Note 14", "OnePlus 13", "Edge 50"],
                    "colors": ["black", "white", "green", "blue", "pink"], "sizes": ["128GB", "256GB", "512GB"],
                    "materials": ["glass", "aluminium"], "price": (199, 1399), "unit": "storage"},
    "laptops": {"brands": ["Lenovo", "Dell", "HP", "Apple", "Asus", "Acer"],
                "lines": ["ThinkPad X1", "XPS 13", "Spectre x360", "MacBook Air", "Zenbook 14", "Swift Go"],
                "colors": ["silver", "black", "grey"], "sizes": ["13 inch", "14 inch", "15 inch", "16 inch"],
                "materials": ["aluminium", "carbon fibre"], "price": (499, 2499), "unit": "screen"},
    "backpacks": {"brands": ["Osprey", "Herschel", "The North Face", "Patagonia", "Samsonite", "Fjallraven"],
                  "lines": ["Daylite", "Little America", "Borealis", "Refugio", "Pro-DLX", "Kanken"],
                  "colors": ["black", "green", "navy", "red", "grey"], "sizes": ["20L", "26L", "30L"],
                  "materials": ["nylon", "polyester", "canvas"], "price": (45, 220), "unit": "volume"},
    "coffee makers": {"brands": ["Breville", "De'Longhi", "Nespresso", "Keurig", "Philips", "Cuisinart"],
                      "lines": ["Barista Express", "Magnifica", "Vertuo Next", "K-Elite", "LatteGo 3200", "DCC-3200"],
                      "colors": ["black", "silver", "red", "white"], "sizes": ["1L", "1.5L", "1.8L"],
                      "materials": ["stainless steel", "plastic"], "price": (79, 899), "unit": "capacity"},
}


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    brand: str
    line: str
    color: str
    size: str
    material: str
    model_number: str
    price: float

    @property
    def title(self) -> str:
        return (f"{self.brand} {self.line} {self.category.rstrip('s')} - {self.color}, {self.size}, "
                f"{self.material} ({self.model_number})")


def make_catalog(rng: random.Random, per_category: int = 24) -> list[Product]:
    products = []
    for category, spec in CATEGORIES.items():
        for i in range(per_category):
            index = rng.randrange(len(spec["brands"]))
            low, high = spec["price"]
            products.append(Product(
                product_id=f"{category[:3].upper()}-{i:04d}", category=category, brand=spec["brands"][index],
                line=spec["lines"][index], color=rng.choice(spec["colors"]), size=rng.choice(spec["sizes"]),
                material=rng.choice(spec["materials"]),
                model_number=f"{spec['brands'][index][:2].upper()}{rng.randrange(100, 999)}-{rng.randrange(10, 99)}",
                price=round(rng.uniform(low, high), 2)))
    return products


def _query_for(product: Product, rng: random.Random) -> tuple[str, dict[str, str]]:
    """A shopper's query about ``product`` and the attributes it names (its specificity varies)."""
    named: dict[str, str] = {"category": product.category}
    parts = []
    roll = rng.random()
    if roll > 0.25:
        named["brand"] = product.brand
        parts.append(product.brand.lower())
    if roll > 0.55:
        parts.append(product.line.lower())
        named["line"] = product.line
    parts.append(product.category if rng.random() < 0.7 else product.category.split()[-1])
    if rng.random() < 0.45:
        named["color"] = product.color
        parts.insert(0 if rng.random() < 0.5 else len(parts), product.color)
    if rng.random() < 0.3:
        named["size"] = product.size
        parts.append(product.size.lower())
    if rng.random() < 0.15:
        parts.insert(0, rng.choice(["cheap", "best", "new", "sale"]))
    return " ".join(parts), named


def _grade(product: Product, named: dict[str, str]) -> int:
    if product.category != named["category"]:
        return 0
    attributes = {"brand": product.brand, "line": product.line, "color": product.color, "size": product.size}
    return 2 if all(attributes[k] == v for k, v in named.items() if k != "category") else 1


def make_pairs(products: list[Product], rng: random.Random, queries: int, per_query: int = 4) -> list[dict[str, Any]]:
    """Query–product pairs with graded labels; each query sees its source product, same-category
    products and an occasional product from another category, as a result page would."""
    rows = []
    by_category: dict[str, list[Product]] = {}
    for p in products:
        by_category.setdefault(p.category, []).append(p)
    for q in range(queries):
        source = rng.choice(products)
        query, named = _query_for(source, rng)
        shown = [source]
        shown += rng.sample(by_category[source.category], k=min(per_query - 2, len(by_category[source.category])))
        shown.append(rng.choice(products))
        seen = set()
        for product in shown:
            if product.product_id in seen:
                continue
            seen.add(product.product_id)
            rows.append({"query_id": f"q{q:05d}", "query": query, "product_id": product.product_id,
                         "title": product.title, "brand": product.brand, "color": product.color,
                         "size": product.size, "category": product.category, "price": product.price,
                         "label": _grade(product, named)})
    return rows


def make_demo_dataset(seed: int = 2026, train_queries: int = 150, eval_queries: int = 80
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows): disjoint queries, the same catalog."""
    rng = random.Random(seed)
    catalog = make_catalog(rng)
    train = make_pairs(catalog, rng, train_queries)
    evaluation = make_pairs(catalog, rng, eval_queries)
    train_queries_seen = {r["query"] for r in train}
    evaluation = [r for r in evaluation if r["query"] not in train_queries_seen]
    for row in evaluation:
        row["query_id"] = "e" + row["query_id"][1:]
    return train, evaluation
