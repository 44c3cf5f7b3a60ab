"""Demo data: businesses clustered around real city centres, generated offline and seeded."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from scalelab.proximity.model import BusinessIn

# (city, latitude, longitude, IANA zone, ISO country): public coordinates of city centres.
CITIES: tuple[tuple[str, float, float, str, str], ...] = (
    ("San Francisco", 37.7749, -122.4194, "America/Los_Angeles", "US"),
    ("New York", 40.7128, -74.0060, "America/New_York", "US"),
    ("Chicago", 41.8781, -87.6298, "America/Chicago", "US"),
    ("Mexico City", 19.4326, -99.1332, "America/Mexico_City", "MX"),
    ("Sao Paulo", -23.5505, -46.6333, "America/Sao_Paulo", "BR"),
    ("Buenos Aires", -34.6037, -58.3816, "America/Argentina/Buenos_Aires", "AR"),
    ("London", 51.5074, -0.1278, "Europe/London", "GB"),
    ("Paris", 48.8566, 2.3522, "Europe/Paris", "FR"),
    ("Berlin", 52.5200, 13.4050, "Europe/Berlin", "DE"),
    ("Madrid", 40.4168, -3.7038, "Europe/Madrid", "ES"),
    ("Helsinki", 60.1699, 24.9384, "Europe/Helsinki", "FI"),
    ("Monaco", 43.7384, 7.4246, "Europe/Monaco", "MC"),
    ("Istanbul", 41.0082, 28.9784, "Europe/Istanbul", "TR"),
    ("Cairo", 30.0444, 31.2357, "Africa/Cairo", "EG"),
    ("Lagos", 6.5244, 3.3792, "Africa/Lagos", "NG"),
    ("Nairobi", -1.2921, 36.8219, "Africa/Nairobi", "KE"),
    ("Mumbai", 19.0760, 72.8777, "Asia/Kolkata", "IN"),
    ("Delhi", 28.6139, 77.2090, "Asia/Kolkata", "IN"),
    ("Bangkok", 13.7563, 100.5018, "Asia/Bangkok", "TH"),
    ("Singapore", 1.3521, 103.8198, "Asia/Singapore", "SG"),
    ("Shanghai", 31.2304, 121.4737, "Asia/Shanghai", "CN"),
    ("Seoul", 37.5665, 126.9780, "Asia/Seoul", "KR"),
    ("Tokyo", 35.6762, 139.6503, "Asia/Tokyo", "JP"),
    ("Sydney", -33.8688, 151.2093, "Australia/Sydney", "AU"),
    ("Auckland", -36.8485, 174.7633, "Pacific/Auckland", "NZ"),
    ("Suva", -18.1248, 178.4501, "Pacific/Fiji", "FJ"),
    ("Anchorage", 61.2181, -149.9003, "America/Anchorage", "US"),
    ("Reykjavik", 64.1466, -21.9426, "Atlantic/Reykjavik", "IS"),
    ("Longyearbyen", 78.2232, 15.6267, "Arctic/Longyearbyen", "SJ"),
    ("Honolulu", 21.3069, -157.8583, "Pacific/Honolulu", "US"),
)

CATEGORIES = (
    "restaurant",
    "cafe",
    "bar",
    "grocery",
    "pharmacy",
    "hotel",
    "gym",
    "bakery",
    "bookstore",
    "hardware",
)

_HOURS = (
    {d: [("09:00", "17:00")] for d in ("mon", "tue", "wed", "thu", "fri")},
    {d: [("07:00", "22:00")] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    {d: [("18:00", "02:00")] for d in ("wed", "thu", "fri", "sat")},
    {d: [("00:00", "24:00")] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    {d: [("11:30", "14:30"), ("18:00", "22:30")] for d in ("tue", "wed", "thu", "fri", "sat")},
)

_M_PER_DEG = 111_195.0


def generate(
    n: int, seed: int = 1, sigma_m: float = 4000.0, cities: int | None = None
) -> Iterator[BusinessIn]:
    """n businesses around the first `cities` centres (all by default), gaussian spread.

    Built with model_construct: the values are valid by construction and validating a
    million of them would dominate the bench's set-up time.
    """
    rng = random.Random(seed)
    pool = CITIES[: cities or len(CITIES)]
    for i in range(n):
        city, clat, clon, tz, country = pool[rng.randrange(len(pool))]
        lat = max(-90.0, min(90.0, clat + rng.gauss(0.0, sigma_m) / _M_PER_DEG))
        dlon = rng.gauss(0.0, sigma_m) / (_M_PER_DEG * max(0.01, math.cos(math.radians(lat))))
        lon = (clon + dlon + 540.0) % 360.0 - 180.0
        category = CATEGORIES[rng.randrange(len(CATEGORIES))]
        yield BusinessIn.model_construct(
            name=f"{city} {category} #{i + 1}",
            latitude=round(lat, 6),
            longitude=round(lon, 6),
            category=category,
            address=f"{rng.randrange(1, 400)} Demo Street",
            city=city,
            country=country,
            timezone=tz,
            hours=_HOURS[rng.randrange(len(_HOURS))],
        )
