#![allow(clippy::unwrap_used)]
use std::collections::BTreeMap;
fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(42);
    let t = std::time::Instant::now();
    let league = gapless_nba::league(seed);
    eprintln!("generated in {:?}", t.elapsed());
    for s in &league.seasons {
        let mut by_type: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut pts = vec![];
        let mut per_day: BTreeMap<chrono::NaiveDate, usize> = BTreeMap::new();
        for g in &s.games {
            let e = by_type.entry(g.season_type.as_str()).or_default();
            e.0 += 1;
            e.1 += g.players.len();
            pts.push(g.home_points);
            pts.push(g.away_points);
            *per_day.entry(g.game_date).or_default() += 1;
        }
        pts.sort();
        let lens: Vec<usize> = s.series.iter().map(|x| x.game_ids.len()).collect();
        let reg_days = s
            .games
            .iter()
            .filter(|g| g.season_type.as_str() == "regular")
            .map(|g| g.game_date)
            .collect::<std::collections::BTreeSet<_>>();
        let maxday = per_day.values().max().unwrap();
        let first_po = s
            .games
            .iter()
            .filter(|g| g.season_type.as_str() == "playoffs")
            .map(|g| g.game_date)
            .min()
            .unwrap();
        let last_po = s
            .games
            .iter()
            .filter(|g| g.season_type.as_str() == "playoffs")
            .map(|g| g.game_date)
            .max()
            .unwrap();
        println!(
            "{} {:?} team pts p5/50/95 {} {} {} series {:?} regdays {} maxday {} playoffs {}..{} rosters {}",
            s.label,
            by_type,
            pts[pts.len() / 20],
            pts[pts.len() / 2],
            pts[pts.len() * 19 / 20],
            lens,
            reg_days.len(),
            maxday,
            first_po,
            last_po,
            s.rosters.len()
        );
        for se in &s.series {
            print!(
                "R{} {}-{} {}:{} | ",
                se.round, se.higher_seed, se.lower_seed, se.higher_seed_wins, se.lower_seed_wins
            );
        }
        println!();
        let po: Vec<_> = s
            .games
            .iter()
            .filter(|g| g.season_type.as_str() != "regular")
            .map(|g| {
                format!(
                    "{} {} {}@{}",
                    g.game_id, g.game_date, g.away_team, g.home_team
                )
            })
            .collect();
        if seed == 999 {
            println!("{}", po.join("\n"));
        }
    }
    println!("rows {}", league.box_score_rows());
    // player scoring stability: top scorer avg
    let g = &league.seasons[0].games[100];
    for p in &g.players {
        println!("{:?}", p);
    }
}
