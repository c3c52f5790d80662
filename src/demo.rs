//! The demo catalog (`--demo`): six categories, 1,000 plausible products, a demo admin and a
//! demo shopper. Written through commands like every write, only into an empty store. The
//! catalog is the same on every run (a fixed pseudo-random sequence); the passwords are new
//! and are kept beside the store so later starts can print them again.

use std::path::Path;

use rust_decimal::Decimal;
use store::{Command, CommandOutcome, NewProduct, NewUser};
use tokio::task::JoinSet;

use crate::auth;
use crate::error::ApiError;
use crate::node::{AppState, NodeError};
use std::sync::Arc;

pub const PRODUCT_COUNT: usize = 1000;
const CREDENTIALS_FILE: &str = "demo-credentials.txt";
const ADMIN: &str = "demo-admin";
const SHOPPER: &str = "demo-shopper";

/// A category and the words its product names are made of.
struct Shelf {
    name: &'static str,
    brands: &'static [&'static str],
    items: &'static [&'static str],
    variants: &'static [&'static str],
    price_range: (u32, u32),
}

const SHELVES: [Shelf; 6] = [
    Shelf {
        name: "Merch",
        brands: &[
            "Soundwave",
            "Backline",
            "Riff Raff",
            "Encore",
            "Feedback Loop",
        ],
        items: &[
            "Tour T-Shirt",
            "Hoodie",
            "Tote Bag",
            "Poster",
            "Cap",
            "Enamel Pin",
            "Patch Set",
        ],
        variants: &[
            "Black",
            "White",
            "Vintage Wash",
            "Limited Edition",
            "XL",
            "Glow",
        ],
        price_range: (5, 80),
    },
    Shelf {
        name: "Musical Instruments",
        brands: &[
            "Fender", "Gibson", "Yamaha", "Ibanez", "Roland", "Korg", "Pearl", "Martin",
        ],
        items: &[
            "Electric Guitar",
            "Acoustic Guitar",
            "Bass Guitar",
            "Digital Piano",
            "Synthesizer",
            "Drum Kit",
            "Violin",
            "Ukulele",
            "Trumpet",
            "Saxophone",
        ],
        variants: &[
            "Sunburst", "Natural", "Black", "Studio", "Standard", "Deluxe", "Custom",
        ],
        price_range: (120, 3500),
    },
    Shelf {
        name: "Musical Equipment",
        brands: &[
            "Shure",
            "Marshall",
            "Focusrite",
            "Boss",
            "Audio-Technica",
            "Behringer",
            "Neumann",
        ],
        items: &[
            "Dynamic Microphone",
            "Condenser Microphone",
            "Guitar Amplifier",
            "Audio Interface",
            "Effects Pedal",
            "Studio Monitor",
            "Mixer",
            "Headphones",
            "DI Box",
        ],
        variants: &[
            "MkII", "Pro", "Compact", "2x12", "USB-C", "Stereo", "Classic",
        ],
        price_range: (40, 1800),
    },
    Shelf {
        name: "Vinyl Records",
        brands: &[
            "Blue Note",
            "Motown",
            "Sub Pop",
            "Warp",
            "Rough Trade",
            "Stax",
            "4AD",
        ],
        items: &[
            "Live at the Roundhouse",
            "Midnight Sessions",
            "Greatest Hits",
            "Debut LP",
            "Remastered Classics",
            "B-Sides and Rarities",
            "Soundtrack",
        ],
        variants: &[
            "180g",
            "Double LP",
            "Colored Vinyl",
            "First Press",
            "Gatefold",
            "Picture Disc",
        ],
        price_range: (18, 90),
    },
    Shelf {
        name: "Disks",
        brands: &[
            "Columbia", "Island", "Virgin", "Atlantic", "Nonesuch", "ECM",
        ],
        items: &[
            "Anthology CD",
            "Live CD",
            "Studio Album CD",
            "Box Set",
            "SACD",
            "Blu-ray Concert",
        ],
        variants: &[
            "Remastered",
            "Deluxe",
            "Import",
            "Digipak",
            "Anniversary",
            "Bonus Tracks",
        ],
        price_range: (8, 120),
    },
    Shelf {
        name: "Accessories",
        brands: &[
            "D'Addario",
            "Ernie Ball",
            "Dunlop",
            "Planet Waves",
            "Vic Firth",
            "Hercules",
        ],
        items: &[
            "Guitar Strings",
            "Picks",
            "Capo",
            "Guitar Strap",
            "Drumsticks",
            "Instrument Cable",
            "Tuner",
            "Guitar Stand",
            "Gig Bag",
        ],
        variants: &[
            "Light Gauge",
            "12-Pack",
            "10 ft",
            "Leather",
            "Maple",
            "Clip-On",
            "Padded",
        ],
        price_range: (3, 150),
    },
];

/// splitmix64: a fixed, well-mixed sequence so the demo catalog is the same every time.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }

    fn between(&mut self, low: u32, high: u32) -> u32 {
        low + (self.next() % u64::from(high - low + 1)) as u32
    }
}

/// The demo products for categories with the given ids (in `SHELVES` order).
pub fn demo_products(category_ids: &[u64]) -> Vec<NewProduct> {
    let mut sequence = Sequence(0x5EED_CAFE);
    (0..PRODUCT_COUNT)
        .map(|n| {
            let shelf_index = n % SHELVES.len();
            let shelf = &SHELVES[shelf_index];
            let name = format!(
                "{} {} {} #{}",
                sequence.pick(shelf.brands),
                sequence.pick(shelf.items),
                sequence.pick(shelf.variants),
                n + 1
            );
            let (low, high) = shelf.price_range;
            let cents = [0, 49, 95, 99][(sequence.next() % 4) as usize];
            let price = Decimal::new(i64::from(sequence.between(low, high)) * 100 + cents, 2);
            NewProduct {
                description: format!(
                    "{name}, from the {} shelf of the Soundwave demo catalog.",
                    shelf.name
                ),
                name,
                stock: sequence.between(0, 60),
                price,
                category: category_ids[shelf_index],
            }
        })
        .collect()
}

fn random_password() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    Ok(auth::random_bytes(16)?
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

async fn submit_all(
    state: &Arc<AppState>,
    commands: Vec<Command>,
) -> Result<Vec<CommandOutcome>, NodeError> {
    // Submitted together so the writer commits them in a few batches.
    let mut tasks = JoinSet::new();
    for (index, command) in commands.into_iter().enumerate() {
        let state = state.clone();
        tasks.spawn(async move { (index, state.submit(command).await) });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, outcome) =
            joined.map_err(|e| NodeError::Startup(format!("demo task failed: {e}")))?;
        outcomes.push((index, outcome?));
    }
    outcomes.sort_by_key(|(index, _)| *index);
    Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
}

/// Fills an empty store with the demo data and prints the demo credentials.
pub async fn seed(state: &Arc<AppState>, data_dir: &Path) -> Result<(), NodeError> {
    let credentials_path = data_dir.join(CREDENTIALS_FILE);
    if !state.read()?.catalog_is_empty()? {
        match std::fs::read_to_string(&credentials_path) {
            Ok(text) => print!("{text}"),
            Err(_) => println!("demo: the store already has a catalog; nothing added"),
        }
        return Ok(());
    }

    let categories = SHELVES
        .iter()
        .map(|shelf| Command::CreateCategory {
            name: shelf.name.to_owned(),
        })
        .collect();
    let mut category_ids = Vec::new();
    for outcome in submit_all(state, categories).await? {
        match outcome {
            CommandOutcome::Category(category) => category_ids.push(category.id),
            other => return Err(NodeError::Startup(format!("demo category: {other:?}"))),
        }
    }
    let products = demo_products(&category_ids)
        .into_iter()
        .map(Command::CreateProduct)
        .collect();
    submit_all(state, products).await?;

    let mut lines = String::new();
    for (username, is_staff, label) in [
        (ADMIN, true, "demo admin"),
        (SHOPPER, false, "demo shopper"),
    ] {
        let password = random_password()?;
        let password_hash = auth::hash_password(password.clone()).await?;
        state
            .submit(Command::CreateUser(NewUser {
                username: username.to_owned(),
                email: format!("{username}@soundwave.example"),
                phone_number: String::new(),
                password_hash,
                is_staff,
                date_joined: auth::unix_micros(),
            }))
            .await?;
        lines.push_str(&format!(
            "{label}: username={username} password={password}\n"
        ));
    }
    crate::up::write_private(&credentials_path, &lines).map_err(|e| {
        NodeError::Startup(format!("cannot write {}: {e}", credentials_path.display()))
    })?;
    println!(
        "demo: added {} categories and {PRODUCT_COUNT} products",
        SHELVES.len()
    );
    print!("{lines}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_is_the_same_every_time_and_plausible() {
        let ids = [1, 2, 3, 4, 5, 6];
        let first = demo_products(&ids);
        assert_eq!(first, demo_products(&ids));
        assert_eq!(first.len(), PRODUCT_COUNT);
        for product in &first {
            assert!(!product.name.is_empty() && product.name.chars().count() <= 200);
            assert!(product.price > Decimal::ZERO && product.price.scale() == 2);
            assert!(ids.contains(&product.category));
        }
    }
}
