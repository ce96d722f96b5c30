//! Deterministic NBA league: four seasons of schedules, play-in, playoffs and box scores.
//!
//! Everything is drawn from one seed through [`Rng`]: the same seed gives byte-identical
//! output. Calendars follow the real season boundaries; results come from simple player
//! tendencies (points, rebounds and assists per minute, a minutes share by rank in the team)
//! that are stable across games, so a rolling-average model has something to find.

use std::collections::BTreeSet;

use chrono::{Datelike, Days, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// The seasons the example covers, as the year each season starts.
pub const SEASON_YEARS: [i32; 4] = [2021, 2022, 2023, 2024];

/// Minutes in a regulation game for one team (5 players × 48 minutes).
const TEAM_MINUTES: u32 = 240;

/// A player's minutes weight by rank in his team (best first).
const MINUTES_BY_RANK: [f64; 15] = [
    34.0, 33.0, 32.0, 30.0, 29.0, 25.0, 22.0, 19.0, 16.0, 12.0, 9.0, 6.0, 4.0, 3.0, 2.0,
];

/// What kind of game: the tag stored in `season_type` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeasonType {
    /// Regular season, 82 games per team.
    Regular,
    /// The play-in tournament for seeds 7 to 10.
    PlayIn,
    /// Four rounds of best-of-seven series.
    Playoffs,
}

impl SeasonType {
    /// The value stored in the warehouse: `regular`, `play_in` or `playoffs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::PlayIn => "play_in",
            Self::Playoffs => "playoffs",
        }
    }
}

/// Eastern or Western conference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conference {
    /// Eastern conference.
    East,
    /// Western conference.
    West,
}

impl Conference {
    /// `east` or `west`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::East => "east",
            Self::West => "west",
        }
    }
}

/// One franchise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    /// Three-letter abbreviation, e.g. `BOS`.
    pub abbreviation: String,
    /// Full name, e.g. `Boston Celtics`.
    pub name: String,
    /// Its conference.
    pub conference: Conference,
}

const TEAMS: [(&str, &str, Conference); 30] = [
    ("ATL", "Atlanta Hawks", Conference::East),
    ("BOS", "Boston Celtics", Conference::East),
    ("BKN", "Brooklyn Nets", Conference::East),
    ("CHA", "Charlotte Hornets", Conference::East),
    ("CHI", "Chicago Bulls", Conference::East),
    ("CLE", "Cleveland Cavaliers", Conference::East),
    ("DET", "Detroit Pistons", Conference::East),
    ("IND", "Indiana Pacers", Conference::East),
    ("MIA", "Miami Heat", Conference::East),
    ("MIL", "Milwaukee Bucks", Conference::East),
    ("NYK", "New York Knicks", Conference::East),
    ("ORL", "Orlando Magic", Conference::East),
    ("PHI", "Philadelphia 76ers", Conference::East),
    ("TOR", "Toronto Raptors", Conference::East),
    ("WAS", "Washington Wizards", Conference::East),
    ("DAL", "Dallas Mavericks", Conference::West),
    ("DEN", "Denver Nuggets", Conference::West),
    ("GSW", "Golden State Warriors", Conference::West),
    ("HOU", "Houston Rockets", Conference::West),
    ("LAC", "LA Clippers", Conference::West),
    ("LAL", "Los Angeles Lakers", Conference::West),
    ("MEM", "Memphis Grizzlies", Conference::West),
    ("MIN", "Minnesota Timberwolves", Conference::West),
    ("NOP", "New Orleans Pelicans", Conference::West),
    ("OKC", "Oklahoma City Thunder", Conference::West),
    ("PHX", "Phoenix Suns", Conference::West),
    ("POR", "Portland Trail Blazers", Conference::West),
    ("SAC", "Sacramento Kings", Conference::West),
    ("SAS", "San Antonio Spurs", Conference::West),
    ("UTA", "Utah Jazz", Conference::West),
];

const FIRST_NAMES: [&str; 48] = [
    "Aaron", "Andre", "Ben", "Bobby", "Brandon", "Caleb", "Cam", "Chris", "Cole", "Damon",
    "Darius", "Dejon", "Derrick", "Devin", "Donovan", "Drew", "Eli", "Evan", "Gabe", "Grant",
    "Isaiah", "Jalen", "Jamal", "Jaylen", "Jordan", "Josh", "Julius", "Kai", "Keldon", "Kevin",
    "Kyle", "Lamar", "Luka", "Malik", "Marcus", "Miles", "Nate", "Nikola", "Obi", "Paul",
    "Quentin", "Reggie", "Scottie", "Terrence", "Trey", "Tyrese", "Victor", "Zach",
];

const LAST_NAMES: [&str; 48] = [
    "Adams", "Allen", "Bailey", "Barnes", "Bell", "Brooks", "Bryant", "Carter", "Coleman",
    "Cooper", "Davis", "Dixon", "Edwards", "Ellis", "Fields", "Fox", "Gordon", "Grant", "Green",
    "Harris", "Hayes", "Holmes", "Hunter", "Jackson", "James", "Johnson", "Jones", "King", "Lewis",
    "Martin", "Mitchell", "Morris", "Murray", "Nelson", "Owens", "Parker", "Porter", "Reed",
    "Robinson", "Russell", "Simmons", "Smith", "Thomas", "Turner", "Walker", "Warren", "Watson",
    "Young",
];

fn ymd(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("calendar constants are valid dates")
}

fn add_days(date: NaiveDate, days: u64) -> NaiveDate {
    date.checked_add_days(Days::new(days))
        .expect("season dates are far from the end of the calendar")
}

/// The real boundaries of one season.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonCalendar {
    /// The year the season starts (2021 for 2021-22).
    pub season_year: i32,
    /// Opening night.
    pub regular_start: NaiveDate,
    /// Last day of the regular season.
    pub regular_end: NaiveDate,
    /// First play-in day.
    pub play_in_start: NaiveDate,
    /// Last play-in day.
    pub play_in_end: NaiveDate,
    /// First playoff day.
    pub playoffs_start: NaiveDate,
    /// The day of the last Finals game.
    pub playoffs_end: NaiveDate,
    /// Regular-season days without games: Thanksgiving, Christmas Eve, the All-Star break.
    pub off_days: Vec<NaiveDate>,
}

impl SeasonCalendar {
    /// The calendar of the season starting in `season_year`, for the four seasons covered.
    pub fn for_season(season_year: i32) -> Option<Self> {
        // (opening night, regular end, play-in start, playoffs start, Finals end, All-Star break)
        let (regular_start, regular_end, play_in_start, playoffs_start, playoffs_end, all_star) =
            match season_year {
                2021 => (
                    ymd(2021, 10, 19),
                    ymd(2022, 4, 10),
                    ymd(2022, 4, 12),
                    ymd(2022, 4, 16),
                    ymd(2022, 6, 16),
                    (ymd(2022, 2, 18), ymd(2022, 2, 23)),
                ),
                2022 => (
                    ymd(2022, 10, 18),
                    ymd(2023, 4, 9),
                    ymd(2023, 4, 11),
                    ymd(2023, 4, 15),
                    ymd(2023, 6, 12),
                    (ymd(2023, 2, 17), ymd(2023, 2, 22)),
                ),
                2023 => (
                    ymd(2023, 10, 24),
                    ymd(2024, 4, 14),
                    ymd(2024, 4, 16),
                    ymd(2024, 4, 20),
                    ymd(2024, 6, 17),
                    (ymd(2024, 2, 16), ymd(2024, 2, 21)),
                ),
                2024 => (
                    ymd(2024, 10, 22),
                    ymd(2025, 4, 13),
                    ymd(2025, 4, 15),
                    ymd(2025, 4, 19),
                    ymd(2025, 6, 22),
                    (ymd(2025, 2, 14), ymd(2025, 2, 19)),
                ),
                _ => return None,
            };
        let thanksgiving = NaiveDate::from_weekday_of_month_opt(season_year, 11, Weekday::Thu, 4)
            .expect("November has four Thursdays");
        let mut off_days = vec![thanksgiving, ymd(season_year, 12, 24)];
        off_days.extend(all_star.0.iter_days().take_while(|day| *day <= all_star.1));
        Some(Self {
            season_year,
            regular_start,
            regular_end,
            play_in_start,
            play_in_end: add_days(play_in_start, 3),
            playoffs_start,
            playoffs_end,
            off_days,
        })
    }

    /// `2021-22` for the season starting in 2021.
    pub fn label(&self) -> String {
        format!("{}-{:02}", self.season_year, (self.season_year + 1) % 100)
    }

    /// Days on which regular-season games may be played.
    pub fn regular_season_days(&self) -> Vec<NaiveDate> {
        self.regular_start
            .iter_days()
            .take_while(|day| *day <= self.regular_end)
            .filter(|day| !self.off_days.contains(day))
            .collect()
    }

    /// First and last day of the whole season, opening night to the last Finals game.
    pub fn span(&self) -> (NaiveDate, NaiveDate) {
        (self.regular_start, self.playoffs_end)
    }
}

/// One player's line in one game's box score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerLine {
    /// Stable across seasons.
    pub player_id: u32,
    /// Synthetic, unique within the league.
    pub player_name: String,
    /// The player's team abbreviation.
    pub team: String,
    /// In the starting five.
    pub is_starter: bool,
    /// Minutes played (at least 1: only players who played appear).
    pub minutes: u32,
    /// Points: `2 × fgm + fg3m + ftm`.
    pub points: u32,
    /// Total rebounds.
    pub rebounds: u32,
    /// Assists.
    pub assists: u32,
    /// Field goals made (twos and threes).
    pub fgm: u32,
    /// Field goals attempted.
    pub fga: u32,
    /// Three-pointers made.
    pub fg3m: u32,
    /// Three-pointers attempted.
    pub fg3a: u32,
    /// Free throws made.
    pub ftm: u32,
    /// Free throws attempted.
    pub fta: u32,
}

/// One game and its box score: the content of a phase-1 file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Game {
    /// NBA-style id: `002` regular, `005` play-in, `004` playoffs, then season and number,
    /// e.g. `0022100001`.
    pub game_id: String,
    /// The game's date (US local).
    pub game_date: NaiveDate,
    /// The year the season starts.
    pub season_year: i32,
    /// Regular season, play-in or playoffs.
    pub season_type: SeasonType,
    /// Home team abbreviation.
    pub home_team: String,
    /// Away team abbreviation.
    pub away_team: String,
    /// Sum of the home players' points.
    pub home_points: u32,
    /// Sum of the away players' points.
    pub away_points: u32,
    /// Home players first, then away players, each by minutes played.
    pub players: Vec<PlayerLine>,
}

impl Game {
    /// The team that scored more (there are no ties: overtime decides).
    pub fn winner(&self) -> &str {
        if self.home_points > self.away_points {
            &self.home_team
        } else {
            &self.away_team
        }
    }
}

/// One best-of-seven playoff series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    /// 1 (first round) to 4 (Finals).
    pub round: u8,
    /// `None` for the Finals.
    pub conference: Option<Conference>,
    /// The team with home-court advantage.
    pub higher_seed: String,
    /// The other team.
    pub lower_seed: String,
    /// Games won by the higher seed.
    pub higher_seed_wins: u8,
    /// Games won by the lower seed.
    pub lower_seed_wins: u8,
    /// Ids of the series' games, in order.
    pub game_ids: Vec<String>,
}

impl Series {
    /// The team that won four games.
    pub fn winner(&self) -> &str {
        if self.higher_seed_wins > self.lower_seed_wins {
            &self.higher_seed
        } else {
            &self.lower_seed
        }
    }
}

/// One player on one team's roster for a season.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterSpot {
    /// Team abbreviation.
    pub team: String,
    /// Stable player id.
    pub player_id: u32,
    /// Player name.
    pub player_name: String,
}

/// One season: rosters, every game (sorted by date, then id) and the playoff series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Season {
    /// The year the season starts.
    pub season_year: i32,
    /// `2021-22` style.
    pub label: String,
    /// Its boundaries.
    pub calendar: SeasonCalendar,
    /// 13 to 15 players per team.
    pub rosters: Vec<RosterSpot>,
    /// Regular season, play-in and playoff games, by date then id.
    pub games: Vec<Game>,
    /// The 15 playoff series, by round.
    pub series: Vec<Series>,
}

/// The generated league: 30 teams and four seasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct League {
    /// The seed it was generated from.
    pub seed: u64,
    /// The 30 franchises.
    pub teams: Vec<Team>,
    /// 2021-22 to 2024-25.
    pub seasons: Vec<Season>,
}

impl League {
    /// Every game of every season, in date order.
    pub fn games(&self) -> impl Iterator<Item = &Game> {
        self.seasons.iter().flat_map(|season| season.games.iter())
    }

    /// Player box-score rows over all games.
    pub fn box_score_rows(&self) -> usize {
        self.games().map(|game| game.players.len()).sum()
    }

    /// The season with the given start year.
    pub fn season(&self, season_year: i32) -> Option<&Season> {
        self.seasons
            .iter()
            .find(|season| season.season_year == season_year)
    }
}

/// Generates the league for `seed`: the same seed always gives the same league.
pub fn league(seed: u64) -> League {
    let root = Rng::new(seed);
    let teams: Vec<Team> = TEAMS
        .iter()
        .map(|(abbreviation, name, conference)| Team {
            abbreviation: (*abbreviation).to_owned(),
            name: (*name).to_owned(),
            conference: *conference,
        })
        .collect();
    let mut people = People::default();
    let mut rosters: Vec<Vec<usize>> = Vec::new();
    let mut seasons = Vec::new();
    for season_year in SEASON_YEARS {
        let mut rng = root.fork(season_year as u64);
        if rosters.is_empty() {
            rosters = people.initial_rosters(&mut rng, teams.len());
        } else {
            rosters = people.offseason(&mut rng, rosters);
        }
        let calendar = SeasonCalendar::for_season(season_year).expect("covered season");
        seasons.push(simulate_season(&rng, &people, &teams, &rosters, calendar));
    }
    League {
        seed,
        teams,
        seasons,
    }
}

// ---------------------------------------------------------------------------------------------
// Players.

/// A player's tendencies. Kept out of the public model: only their results are data.
#[derive(Debug, Clone)]
struct Profile {
    id: u32,
    name: String,
    age: u32,
    /// Points per minute.
    scoring: f64,
    rebounding: f64,
    passing: f64,
    /// Share of field-goal points that come from threes.
    three_share: f64,
    free_throw_share: f64,
    two_pct: f64,
    three_pct: f64,
    free_throw_pct: f64,
    /// Chance of being available for a game.
    availability: f64,
}

impl Profile {
    fn quality(&self) -> f64 {
        self.scoring + 0.4 * self.rebounding + 0.6 * self.passing
    }
}

#[derive(Debug, Default)]
struct People {
    profiles: Vec<Profile>,
    names: BTreeSet<String>,
}

impl People {
    /// A new player; `tier` 0 is a star, 14 the end of the bench.
    fn create(&mut self, rng: &mut Rng, tier: f64, age: u32) -> usize {
        let name = loop {
            let name = format!(
                "{} {}",
                FIRST_NAMES[rng.below(FIRST_NAMES.len())],
                LAST_NAMES[rng.below(LAST_NAMES.len())]
            );
            let name = if self.names.contains(&name) {
                // Add a suffix rather than loop forever once common names run out.
                format!("{name} {}", ["Jr.", "II", "III", "IV"][rng.below(4)])
            } else {
                name
            };
            if self.names.insert(name.clone()) {
                break name;
            }
        };
        let star = if tier < 1.0 { 0.12 } else { 0.0 };
        self.profiles.push(Profile {
            id: 1_000 + self.profiles.len() as u32,
            name,
            age,
            scoring: (0.545 - 0.021 * tier + star + 0.06 * rng.normal()).clamp(0.12, 1.05),
            rebounding: 0.18 * rng.between(0.45, 1.7),
            passing: 0.10 * rng.between(0.35, 1.9),
            three_share: rng.between(0.0, 0.55),
            free_throw_share: rng.between(0.08, 0.28),
            two_pct: rng.between(0.47, 0.60),
            three_pct: rng.between(0.30, 0.42),
            free_throw_pct: rng.between(0.65, 0.92),
            availability: rng.between(0.92, 0.995),
        });
        self.profiles.len() - 1
    }

    fn initial_rosters(&mut self, rng: &mut Rng, teams: usize) -> Vec<Vec<usize>> {
        (0..teams)
            .map(|_| {
                let size = 13 + rng.below(3);
                (0..size)
                    .map(|rank| {
                        let age = 20 + rng.below(15) as u32;
                        self.create(rng, rank as f64, age)
                    })
                    .collect()
            })
            .collect()
    }

    /// Ages and develops players, retires some, moves some, signs rookies.
    fn offseason(&mut self, rng: &mut Rng, rosters: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
        let mut pool = Vec::new();
        let mut kept: Vec<Vec<usize>> = Vec::with_capacity(rosters.len());
        for roster in rosters {
            let mut stays = Vec::new();
            for player in roster {
                let profile = &mut self.profiles[player];
                profile.age += 1;
                let growth = match profile.age {
                    0..=24 => 0.05,
                    25..=30 => 0.0,
                    _ => -0.04,
                };
                profile.scoring =
                    (profile.scoring * (1.0 + growth + 0.05 * rng.normal())).clamp(0.12, 1.05);
                let retire = 0.03 + if profile.age >= 34 { 0.35 } else { 0.0 };
                if rng.chance(retire) {
                    continue;
                }
                if rng.chance(0.2) {
                    pool.push(player);
                } else {
                    stays.push(player);
                }
            }
            kept.push(stays);
        }
        rng.shuffle(&mut pool);
        let mut order: Vec<usize> = (0..kept.len()).collect();
        rng.shuffle(&mut order);
        for team in order {
            let target = 13 + rng.below(3);
            while kept[team].len() < target {
                let player = match pool.pop() {
                    Some(player) if rng.chance(0.75) => player,
                    other => {
                        // Unsigned this time: back in the pool for the next team.
                        pool.extend(other);
                        let tier = rng.between(3.0, 14.0);
                        let age = 19 + rng.below(4) as u32;
                        self.create(rng, tier, age)
                    }
                };
                kept[team].push(player);
            }
            kept[team].truncate(15);
        }
        kept
    }
}

// ---------------------------------------------------------------------------------------------
// A season.

/// One team in one season: its players (best first) and their minutes weights.
#[derive(Debug)]
struct Squad {
    players: Vec<usize>,
    minutes_weight: Vec<f64>,
    /// Multiplies the opponent's scoring.
    defense: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    wins: u32,
    point_difference: i64,
}

/// A played game before it gets a date and an id.
#[derive(Debug)]
struct Played {
    home: usize,
    away: usize,
    home_points: u32,
    away_points: u32,
    players: Vec<PlayerLine>,
}

impl Played {
    fn home_won(&self) -> bool {
        self.home_points > self.away_points
    }

    fn into_game(self, sim: &Sim<'_>, game_id: String, date: NaiveDate, kind: SeasonType) -> Game {
        Game {
            game_id,
            game_date: date,
            season_year: sim.season_year,
            season_type: kind,
            home_team: sim.teams[self.home].abbreviation.clone(),
            away_team: sim.teams[self.away].abbreviation.clone(),
            home_points: self.home_points,
            away_points: self.away_points,
            players: self.players,
        }
    }
}

struct Sim<'a> {
    season_year: i32,
    people: &'a People,
    teams: &'a [Team],
    squads: Vec<Squad>,
}

fn simulate_season(
    rng: &Rng,
    people: &People,
    teams: &[Team],
    rosters: &[Vec<usize>],
    calendar: SeasonCalendar,
) -> Season {
    let mut squad_rng = rng.fork(1);
    let squads = rosters
        .iter()
        .map(|roster| {
            let mut players = roster.clone();
            players.sort_by(|a, b| {
                let (a, b) = (&people.profiles[*a], &people.profiles[*b]);
                b.quality().total_cmp(&a.quality()).then(a.id.cmp(&b.id))
            });
            let minutes_weight = (0..players.len())
                .map(|rank| MINUTES_BY_RANK[rank.min(14)] * squad_rng.between(0.9, 1.1))
                .collect();
            Squad {
                players,
                minutes_weight,
                defense: squad_rng.between(0.94, 1.06),
            }
        })
        .collect();
    let sim = Sim {
        season_year: calendar.season_year,
        people,
        teams,
        squads,
    };
    let year = calendar.season_year % 100;
    let mut games = Vec::new();
    let mut records = vec![Record::default(); teams.len()];

    let slots = schedule_regular_season(&mut rng.fork(2), &calendar, teams);
    let mut game_rng = rng.fork(3);
    for (number, (date, home, away)) in slots.into_iter().enumerate() {
        let played = sim.play(&mut game_rng, home, away, SeasonType::Regular);
        let margin = i64::from(played.home_points) - i64::from(played.away_points);
        let winner = if played.home_won() { home } else { away };
        records[winner].wins += 1;
        records[home].point_difference += margin;
        records[away].point_difference -= margin;
        let id = format!("002{year:02}{:05}", number + 1);
        games.push(played.into_game(&sim, id, date, SeasonType::Regular));
    }

    let mut playoff_rng = rng.fork(4);
    let mut seeds = Vec::new();
    let mut play_in = Vec::new();
    for (offset, conference) in [Conference::East, Conference::West].into_iter().enumerate() {
        let mut standings: Vec<usize> = (0..teams.len())
            .filter(|team| teams[*team].conference == conference)
            .collect();
        standings.sort_by(|a, b| better(&records, *a, *b));
        let first_day = add_days(calendar.play_in_start, offset as u64);
        let final_day = add_days(calendar.play_in_start, 3);
        // 7 v 8: the winner is the 7 seed. 9 v 10: the loser is out. Then the loser of the
        // first hosts the winner of the second for the 8 seed.
        let seven_eight = sim.play(
            &mut playoff_rng,
            standings[6],
            standings[7],
            SeasonType::PlayIn,
        );
        let nine_ten = sim.play(
            &mut playoff_rng,
            standings[8],
            standings[9],
            SeasonType::PlayIn,
        );
        let (seventh, host) = winner_loser(&seven_eight);
        let (guest, _) = winner_loser(&nine_ten);
        let last_chance = sim.play(&mut playoff_rng, host, guest, SeasonType::PlayIn);
        let (eighth, _) = winner_loser(&last_chance);
        play_in.push((first_day, seven_eight));
        play_in.push((first_day, nine_ten));
        play_in.push((final_day, last_chance));
        let mut conference_seeds = standings[..6].to_vec();
        conference_seeds.push(seventh);
        conference_seeds.push(eighth);
        seeds.push(conference_seeds);
    }
    play_in.sort_by_key(|(date, _)| *date);
    for (number, (date, played)) in play_in.into_iter().enumerate() {
        let id = format!("005{year:02}{:05}", number + 1);
        games.push(played.into_game(&sim, id, date, SeasonType::PlayIn));
    }

    let (series, playoff_games) = sim.playoffs(&mut playoff_rng, &calendar, &seeds, &records);
    games.extend(playoff_games);
    games.sort_by(|a, b| (a.game_date, &a.game_id).cmp(&(b.game_date, &b.game_id)));

    let rosters = sim
        .squads
        .iter()
        .enumerate()
        .flat_map(|(team, squad)| squad.players.iter().map(move |player| (team, *player)))
        .map(|(team, player)| RosterSpot {
            team: teams[team].abbreviation.clone(),
            player_id: people.profiles[player].id,
            player_name: people.profiles[player].name.clone(),
        })
        .collect();
    Season {
        season_year: calendar.season_year,
        label: calendar.label(),
        calendar,
        rosters,
        games,
        series,
    }
}

/// Standings order: wins, then point difference, then the fixed team order.
fn better(records: &[Record], a: usize, b: usize) -> std::cmp::Ordering {
    records[b]
        .wins
        .cmp(&records[a].wins)
        .then(
            records[b]
                .point_difference
                .cmp(&records[a].point_difference),
        )
        .then(a.cmp(&b))
}

fn winner_loser(played: &Played) -> (usize, usize) {
    if played.home_won() {
        (played.home, played.away)
    } else {
        (played.away, played.home)
    }
}

// ---------------------------------------------------------------------------------------------
// Regular-season calendar.

/// The 1,230 pairings: everyone hosts everyone once (870 games), plus twelve more home games
/// per team against its neighbours in a conference-grouped circle (360 games), so each team
/// plays 82 games, 41 at home.
fn regular_season_pairings(rng: &mut Rng, teams: &[Team]) -> Vec<(usize, usize)> {
    let mut pairings = Vec::with_capacity(1_230);
    for home in 0..teams.len() {
        for away in 0..teams.len() {
            if home != away {
                pairings.push((home, away));
            }
        }
    }
    let mut circle = Vec::new();
    for conference in [Conference::East, Conference::West] {
        let mut members: Vec<usize> = (0..teams.len())
            .filter(|team| teams[*team].conference == conference)
            .collect();
        rng.shuffle(&mut members);
        circle.extend(members);
    }
    for position in 0..circle.len() {
        for step in 1..=12 {
            pairings.push((circle[position], circle[(position + step) % circle.len()]));
        }
    }
    pairings
}

/// Assigns every pairing a day: no team twice on a day, at most 15 games a day. Teams that
/// are behind their pace go first, so nobody ends with more games than days left. Retries
/// with fresh draws in the (rare) case a team's last games can't be fitted.
fn schedule_regular_season(
    rng: &mut Rng,
    calendar: &SeasonCalendar,
    teams: &[Team],
) -> Vec<(NaiveDate, usize, usize)> {
    let days = calendar.regular_season_days();
    for _attempt in 0..100 {
        let pairings = regular_season_pairings(rng, teams);
        if let Some(slots) = try_schedule(rng, &days, pairings, teams.len()) {
            return slots;
        }
    }
    panic!("no regular-season schedule found in 100 attempts: the calendar is too short");
}

fn try_schedule(
    rng: &mut Rng,
    days: &[NaiveDate],
    mut remaining: Vec<(usize, usize)>,
    team_count: usize,
) -> Option<Vec<(NaiveDate, usize, usize)>> {
    let mut left = vec![0_usize; team_count];
    for (home, away) in &remaining {
        left[*home] += 1;
        left[*away] += 1;
    }
    let mut slots = Vec::with_capacity(remaining.len());
    for (index, day) in days.iter().enumerate() {
        let days_left = (days.len() - index) as f64;
        let pace = remaining.len() as f64 / days_left;
        let busy_night = match day.weekday() {
            Weekday::Mon => 1.0,
            Weekday::Tue => 0.85,
            Weekday::Wed => 1.25,
            Weekday::Thu => 0.7,
            Weekday::Fri => 1.2,
            Weekday::Sat => 1.05,
            Weekday::Sun => 0.9,
        };
        let target = (pace * busy_night * rng.between(0.7, 1.3))
            .round()
            .clamp(1.0, 15.0) as usize;
        let urgency = |team: usize| left[team] as f64 / days_left;
        let mut ranked: Vec<(f64, usize)> = remaining
            .iter()
            .enumerate()
            .map(|(at, (home, away))| (urgency(*home) + urgency(*away) + 0.35 * rng.unit(), at))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut busy = vec![false; team_count];
        let mut picked = Vec::new();
        for (_, at) in ranked {
            let (home, away) = remaining[at];
            if busy[home] || busy[away] || picked.len() >= 15 {
                continue;
            }
            // A team that must play nearly every remaining day plays today whatever the target.
            let is_critical = urgency(home) >= 0.8 || urgency(away) >= 0.8;
            if picked.len() < target || is_critical {
                busy[home] = true;
                busy[away] = true;
                picked.push(at);
            }
        }
        picked.sort_unstable_by(|a, b| b.cmp(a));
        let mut today: Vec<(usize, usize)> = picked
            .into_iter()
            .map(|at| remaining.swap_remove(at))
            .collect();
        today.reverse();
        for (home, away) in today {
            left[home] -= 1;
            left[away] -= 1;
            slots.push((*day, home, away));
        }
    }
    remaining.is_empty().then_some(slots)
}

// ---------------------------------------------------------------------------------------------
// Playoffs.

impl Sim<'_> {
    /// Four rounds of best-of-seven. Rounds 1–3 run forward from the first playoff day, each
    /// series starting two days after both of its feeder series are over; the Finals are laid
    /// backward from the season's last day.
    fn playoffs(
        &self,
        rng: &mut Rng,
        calendar: &SeasonCalendar,
        seeds: &[Vec<usize>],
        records: &[Record],
    ) -> (Vec<Series>, Vec<Game>) {
        let mut series_out = Vec::new();
        let mut games = Vec::new();
        // (team, seed number, day the team's last series ended)
        let mut alive: Vec<Vec<(usize, usize, NaiveDate)>> = Vec::new();
        for (conference_index, conference_seeds) in seeds.iter().enumerate() {
            let mut survivors = Vec::new();
            for (bracket_index, (high, low)) in [(0, 7), (3, 4), (2, 5), (1, 6)].iter().enumerate()
            {
                // Half the series open on the first day, half on the second.
                let stagger = ((bracket_index + conference_index) % 2) as u64;
                let start = add_days(calendar.playoffs_start, stagger);
                let series_index = conference_index * 4 + bracket_index;
                let (series, played) = self.series(
                    rng,
                    (1, series_index),
                    (conference_seeds[*high], conference_seeds[*low]),
                    Some(self.teams[conference_seeds[*high]].conference),
                    SeriesDates::Forward(start),
                );
                let end = played.last().map_or(start, |game| game.game_date);
                let winner_seed = if series.higher_seed_wins == 4 {
                    *high
                } else {
                    *low
                };
                survivors.push((conference_seeds[winner_seed], winner_seed, end));
                series_out.push(series);
                games.extend(played);
            }
            alive.push(survivors);
        }
        for round in [2_u8, 3] {
            for (conference_index, survivors) in alive.iter_mut().enumerate() {
                let mut next = Vec::new();
                for (pair_index, pair) in survivors.chunks(2).enumerate() {
                    let (high, low) = if pair[0].1 < pair[1].1 {
                        (pair[0], pair[1])
                    } else {
                        (pair[1], pair[0])
                    };
                    let start = add_days(high.2.max(low.2), 2);
                    let series_index = conference_index * survivors.len() / 2 + pair_index;
                    let (series, played) = self.series(
                        rng,
                        (round, series_index),
                        (high.0, low.0),
                        Some(self.teams[high.0].conference),
                        SeriesDates::Forward(start),
                    );
                    let end = played.last().map_or(start, |game| game.game_date);
                    let winner = if series.higher_seed_wins == 4 {
                        high
                    } else {
                        low
                    };
                    next.push((winner.0, winner.1, end));
                    series_out.push(series);
                    games.extend(played);
                }
                *survivors = next;
            }
        }
        let (east, west) = (alive[0][0], alive[1][0]);
        let (high, low) = if better(records, east.0, west.0).is_le() {
            (east, west)
        } else {
            (west, east)
        };
        let earliest = add_days(high.2.max(low.2), 2);
        let (series, played) = self.series(
            rng,
            (4, 0),
            (high.0, low.0),
            None,
            SeriesDates::Backward {
                last: calendar.playoffs_end,
                earliest,
            },
        );
        series_out.push(series);
        games.extend(played);
        (series_out, games)
    }

    /// Plays a series to four wins; the higher seed hosts games 1, 2, 5 and 7.
    fn series(
        &self,
        rng: &mut Rng,
        (round, series_index): (u8, usize),
        (higher, lower): (usize, usize),
        conference: Option<Conference>,
        dates: SeriesDates,
    ) -> (Series, Vec<Game>) {
        let mut played = Vec::new();
        let (mut higher_wins, mut lower_wins) = (0_u8, 0_u8);
        while higher_wins < 4 && lower_wins < 4 {
            let game_number = played.len() + 1;
            let (home, away) = if matches!(game_number, 3 | 4 | 6) {
                (lower, higher)
            } else {
                (higher, lower)
            };
            let game = self.play(rng, home, away, SeasonType::Playoffs);
            if winner_loser(&game).0 == higher {
                higher_wins += 1;
            } else {
                lower_wins += 1;
            }
            played.push(game);
        }
        let game_dates = dates.lay_out(rng, played.len());
        let year = self.season_year % 100;
        let games: Vec<Game> = played
            .into_iter()
            .zip(game_dates)
            .enumerate()
            .map(|(index, (game, date))| {
                let id = format!("004{year:02}00{round}{series_index}{}", index + 1);
                game.into_game(self, id, date, SeasonType::Playoffs)
            })
            .collect();
        let series = Series {
            round,
            conference,
            higher_seed: self.teams[higher].abbreviation.clone(),
            lower_seed: self.teams[lower].abbreviation.clone(),
            higher_seed_wins: higher_wins,
            lower_seed_wins: lower_wins,
            game_ids: games.iter().map(|game| game.game_id.clone()).collect(),
        };
        (series, games)
    }
}

/// How a series' games are spread over days.
#[derive(Debug, Clone, Copy)]
enum SeriesDates {
    /// From a first day on, mostly every other day; a seven-game series spans at most 14 days.
    Forward(NaiveDate),
    /// Ending on `last`, two or three days apart, never before `earliest`.
    Backward {
        last: NaiveDate,
        earliest: NaiveDate,
    },
}

impl SeriesDates {
    fn lay_out(self, rng: &mut Rng, games: usize) -> Vec<NaiveDate> {
        match self {
            Self::Forward(start) => {
                let mut gaps: Vec<u64> = (1..games)
                    .map(|_| [1, 2, 3][rng.weighted(&[15, 70, 15])])
                    .collect();
                shrink(&mut gaps, 13);
                let mut date = start;
                let mut dates = vec![date];
                for gap in gaps {
                    date = add_days(date, gap);
                    dates.push(date);
                }
                dates
            }
            Self::Backward { last, earliest } => {
                let mut gaps: Vec<u64> = (1..games)
                    .map(|_| [2, 3][rng.weighted(&[60, 40])])
                    .collect();
                let room = (last - earliest).num_days().max(0) as u64;
                shrink(&mut gaps, room);
                let mut date = last;
                let mut dates = vec![date];
                for gap in gaps.into_iter().rev() {
                    date = date
                        .checked_sub_days(Days::new(gap))
                        .expect("season dates are far from the start of the calendar");
                    dates.push(date);
                }
                dates.reverse();
                dates
            }
        }
    }
}

/// Shortens the longest gaps (never below one day) until they sum to at most `limit`.
fn shrink(gaps: &mut [u64], limit: u64) {
    while gaps.iter().sum::<u64>() > limit {
        let Some(longest) = gaps
            .iter_mut()
            .filter(|gap| **gap > 1)
            .max_by_key(|gap| **gap)
        else {
            return;
        };
        *longest -= 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Box scores.

/// A player's raw numbers before shooting splits are derived.
#[derive(Debug)]
struct Line {
    player: usize,
    is_starter: bool,
    minutes: u32,
    points: u32,
    rebounds: u32,
    assists: u32,
}

impl Sim<'_> {
    fn play(&self, rng: &mut Rng, home: usize, away: usize, kind: SeasonType) -> Played {
        let mut home_lines = self.team_lines(rng, home, away, true, kind);
        let mut away_lines = self.team_lines(rng, away, home, false, kind);
        let total = |lines: &[Line]| lines.iter().map(|line| line.points).sum::<u32>();
        if total(&home_lines) == total(&away_lines) {
            // Overtime: someone on the winning side scores the deciding basket.
            let winner = if rng.chance(0.55) {
                &mut home_lines
            } else {
                &mut away_lines
            };
            let scorer = rng.below(winner.len().min(5));
            winner[scorer].points += 2;
        }
        let home_points = total(&home_lines);
        let away_points = total(&away_lines);
        let mut players = Vec::with_capacity(home_lines.len() + away_lines.len());
        for (team, lines) in [(home, home_lines), (away, away_lines)] {
            for line in lines {
                players.push(self.player_line(rng, team, line));
            }
        }
        Played {
            home,
            away,
            home_points,
            away_points,
            players,
        }
    }

    /// Who plays, for how long, and what each player does.
    fn team_lines(
        &self,
        rng: &mut Rng,
        team: usize,
        opponent: usize,
        is_home: bool,
        kind: SeasonType,
    ) -> Vec<Line> {
        let squad = &self.squads[team];
        let profiles = &self.people.profiles;
        let mut available: Vec<usize> = (0..squad.players.len())
            .filter(|slot| rng.chance(profiles[squad.players[*slot]].availability))
            .collect();
        for slot in 0..squad.players.len() {
            if available.len() >= 9 {
                break;
            }
            if !available.contains(&slot) {
                available.push(slot);
            }
        }
        let appearance_weights: &[u32] = match kind {
            SeasonType::Regular | SeasonType::PlayIn => &[70, 24, 4, 1, 1],
            SeasonType::Playoffs => &[35, 30, 20, 11, 4],
        };
        let appear = (13 - rng.weighted(appearance_weights)).min(available.len());
        let mut keyed: Vec<(f64, usize)> = available
            .into_iter()
            .map(|slot| (squad.minutes_weight[slot] * rng.between(0.85, 1.15), slot))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        keyed.truncate(appear);
        // The five best (by season role, not tonight's draw) start.
        let mut by_role: Vec<usize> = keyed.iter().map(|(_, slot)| *slot).collect();
        by_role.sort_unstable();
        let starters: Vec<usize> = by_role.iter().copied().take(5).collect();

        let shares: Vec<f64> = keyed
            .iter()
            .map(|(_, slot)| {
                let weight = squad.minutes_weight[*slot];
                // Playoff rotations shorten: starters play more, the bench less.
                let weight = if kind == SeasonType::Playoffs {
                    weight * (weight + 30.0) / 60.0
                } else {
                    weight
                };
                weight * rng.between(0.85, 1.15)
            })
            .collect();
        let minutes = split_minutes(&shares);

        let form = 1.0 + 0.04 * rng.normal();
        let venue = if is_home { 1.015 } else { 0.985 };
        let defense = self.squads[opponent].defense;
        let mut lines: Vec<Line> = keyed
            .iter()
            .zip(minutes)
            .map(|((_, slot), minutes)| {
                let profile = &profiles[squad.players[*slot]];
                let minutes_f = f64::from(minutes);
                let points = draw(
                    rng,
                    minutes_f * profile.scoring * form * venue * defense,
                    1.15,
                );
                Line {
                    player: squad.players[*slot],
                    is_starter: starters.contains(slot),
                    minutes,
                    points,
                    rebounds: draw(rng, minutes_f * profile.rebounding, 1.0),
                    assists: draw(rng, minutes_f * profile.passing, 1.0),
                }
            })
            .collect();
        lines.sort_by(|a, b| b.minutes.cmp(&a.minutes).then(a.player.cmp(&b.player)));
        lines
    }

    fn player_line(&self, rng: &mut Rng, team: usize, line: Line) -> PlayerLine {
        let profile = &self.people.profiles[line.player];
        let shots = shooting(rng, line.points, line.minutes, profile);
        PlayerLine {
            player_id: profile.id,
            player_name: profile.name.clone(),
            team: self.teams[team].abbreviation.clone(),
            is_starter: line.is_starter,
            minutes: line.minutes,
            points: line.points,
            rebounds: line.rebounds,
            assists: line.assists,
            fgm: shots.fgm,
            fga: shots.fga,
            fg3m: shots.fg3m,
            fg3a: shots.fg3a,
            ftm: shots.ftm,
            fta: shots.fta,
        }
    }
}

/// A non-negative count around `mean`, with spread growing like a Poisson count's.
fn draw(rng: &mut Rng, mean: f64, spread: f64) -> u32 {
    let value = mean + (mean.sqrt() * spread + 0.3) * rng.normal();
    value.round().max(0.0) as u32
}

/// Splits the team's 240 minutes in proportion to `shares`: each player at least 1, at most 48.
fn split_minutes(shares: &[f64]) -> Vec<u32> {
    let total: f64 = shares.iter().sum();
    let mut minutes: Vec<u32> = shares
        .iter()
        .map(|share| ((share * f64::from(TEAM_MINUTES) / total).round() as u32).clamp(1, 48))
        .collect();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| shares[*b].total_cmp(&shares[*a]).then(a.cmp(b)));
    let mut cursor = 0;
    loop {
        let sum: u32 = minutes.iter().sum();
        if sum == TEAM_MINUTES {
            return minutes;
        }
        let at = order[cursor % order.len()];
        cursor += 1;
        if sum < TEAM_MINUTES && minutes[at] < 48 {
            minutes[at] += 1;
        } else if sum > TEAM_MINUTES && minutes[at] > 1 {
            minutes[at] -= 1;
        }
    }
}

struct Shots {
    fgm: u32,
    fga: u32,
    fg3m: u32,
    fg3a: u32,
    ftm: u32,
    fta: u32,
}

/// Makes and attempts consistent with `points = 2·fgm + fg3m + ftm`.
fn shooting(rng: &mut Rng, points: u32, minutes: u32, profile: &Profile) -> Shots {
    let mut ftm = ((f64::from(points) * profile.free_throw_share * rng.between(0.4, 1.6)).round()
        as u32)
        .min(points);
    let mut rest = points - ftm;
    let mut fg3m = ((f64::from(rest) * profile.three_share * rng.between(0.5, 1.5) / 3.0).round()
        as u32)
        .min(rest / 3);
    if (rest - 3 * fg3m) % 2 == 1 {
        if fg3m > 0 {
            fg3m -= 1;
        } else if rest >= 3 {
            fg3m = 1;
        } else {
            ftm += 1;
            rest -= 1;
        }
    }
    let fg2m = (rest - 3 * fg3m) / 2;
    let misses = |rng: &mut Rng, made: u32, pct: f64| -> u32 {
        let expected = f64::from(made) * (1.0 - pct) / pct;
        (expected * rng.between(0.6, 1.4)).round() as u32
    };
    // Even a scoreless player takes a shot or two now and then.
    let empty_trips = if points == 0 {
        rng.below(minutes as usize / 8 + 1) as u32
    } else {
        0
    };
    let fg2a = fg2m + misses(rng, fg2m, profile.two_pct) + empty_trips;
    let fg3a = fg3m + misses(rng, fg3m, profile.three_pct);
    let fta = ftm + misses(rng, ftm, profile.free_throw_pct);
    Shots {
        fgm: fg2m + fg3m,
        fga: fg2a + fg3a,
        fg3m,
        fg3a,
        ftm,
        fta,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{Game, League, SEASON_YEARS, Season, SeasonType, league};

    fn check_season(season: &Season) {
        let calendar = &season.calendar;
        let label = &season.label;
        let of_type = |kind: SeasonType| -> Vec<&Game> {
            season
                .games
                .iter()
                .filter(|game| game.season_type == kind)
                .collect()
        };

        let regular = of_type(SeasonType::Regular);
        assert_eq!(regular.len(), 1_230, "{label}");
        let mut home_games: BTreeMap<&str, usize> = BTreeMap::new();
        let mut away_games: BTreeMap<&str, usize> = BTreeMap::new();
        for game in &regular {
            *home_games.entry(&game.home_team).or_default() += 1;
            *away_games.entry(&game.away_team).or_default() += 1;
            assert!(
                game.game_date >= calendar.regular_start && game.game_date <= calendar.regular_end
            );
            assert!(
                !calendar.off_days.contains(&game.game_date),
                "{label}: game on an off day"
            );
        }
        assert_eq!(home_games.len(), 30);
        assert!(
            home_games
                .values()
                .chain(away_games.values())
                .all(|games| *games == 41),
            "{label}"
        );

        let play_in = of_type(SeasonType::PlayIn);
        assert_eq!(play_in.len(), 6, "{label}");
        assert!(play_in.iter().all(|game| {
            game.game_date >= calendar.play_in_start && game.game_date <= calendar.play_in_end
        }));

        let playoffs = of_type(SeasonType::Playoffs);
        assert!(playoffs.iter().all(|game| {
            game.game_date >= calendar.playoffs_start && game.game_date <= calendar.playoffs_end
        }));
        assert_eq!(
            playoffs.iter().map(|game| game.game_date).max(),
            Some(calendar.playoffs_end)
        );
        assert_eq!(season.series.len(), 15, "{label}");
        for (round, count) in [(1, 8), (2, 4), (3, 2), (4, 1)] {
            assert_eq!(
                season
                    .series
                    .iter()
                    .filter(|series| series.round == round)
                    .count(),
                count
            );
        }
        let mut series_games = 0;
        for series in &season.series {
            let length = series.game_ids.len();
            assert!(
                (4..=7).contains(&length),
                "{label}: series of {length} games"
            );
            let wins = (series.higher_seed_wins, series.lower_seed_wins);
            assert_eq!(usize::from(wins.0 + wins.1), length);
            assert!(
                wins.0.max(wins.1) == 4 && wins.0.min(wins.1) < 4,
                "{label}: {wins:?}"
            );
            let won: usize = playoffs
                .iter()
                .filter(|game| series.game_ids.contains(&game.game_id))
                .filter(|game| game.winner() == series.winner())
                .count();
            assert_eq!(won, 4);
            if series.round > 1 {
                // Both teams won a series in the round before.
                for team in [&series.higher_seed, &series.lower_seed] {
                    assert!(season.series.iter().any(|earlier| {
                        earlier.round == series.round - 1 && earlier.winner() == team
                    }));
                }
            }
            series_games += length;
        }
        assert_eq!(playoffs.len(), series_games);

        // No team twice on a day, at most 15 games a day; rounds don't overlap for a team.
        let mut per_day: BTreeMap<_, BTreeSet<&str>> = BTreeMap::new();
        for game in &season.games {
            let teams = per_day.entry(game.game_date).or_default();
            assert!(
                teams.insert(&game.home_team),
                "{label}: {} twice on {}",
                game.home_team,
                game.game_date
            );
            assert!(
                teams.insert(&game.away_team),
                "{label}: {} twice on {}",
                game.away_team,
                game.game_date
            );
        }
        assert!(per_day.values().all(|teams| teams.len() <= 30));
        let dates: Vec<_> = season.games.iter().map(|game| game.game_date).collect();
        assert!(
            dates.windows(2).all(|pair| pair[0] <= pair[1]),
            "games sorted by date"
        );

        // Box scores add up.
        let roster: BTreeMap<u32, &str> = season
            .rosters
            .iter()
            .map(|spot| (spot.player_id, spot.team.as_str()))
            .collect();
        assert_eq!(
            roster.len(),
            season.rosters.len(),
            "a player is on one team per season"
        );
        let mut roster_sizes: BTreeMap<&str, usize> = BTreeMap::new();
        for spot in &season.rosters {
            *roster_sizes.entry(&spot.team).or_default() += 1;
        }
        assert!(
            roster_sizes.values().all(|size| (13..=15).contains(size)),
            "{roster_sizes:?}"
        );
        for game in &season.games {
            for (team, points) in [
                (&game.home_team, game.home_points),
                (&game.away_team, game.away_points),
            ] {
                let lines: Vec<_> = game
                    .players
                    .iter()
                    .filter(|line| &line.team == team)
                    .collect();
                assert!(
                    (9..=13).contains(&lines.len()),
                    "{}: {} players",
                    game.game_id,
                    lines.len()
                );
                assert_eq!(lines.iter().map(|line| line.points).sum::<u32>(), points);
                assert_eq!(lines.iter().map(|line| line.minutes).sum::<u32>(), 240);
                assert_eq!(lines.iter().filter(|line| line.is_starter).count(), 5);
                for line in lines {
                    assert_eq!(roster.get(&line.player_id), Some(&team.as_str()));
                    assert!(line.minutes >= 1);
                    assert_eq!(line.points, 2 * line.fgm + line.fg3m + line.ftm);
                    assert!(line.fgm <= line.fga && line.fg3m <= line.fg3a && line.ftm <= line.fta);
                    assert!(line.fg3m <= line.fgm && line.fg3a <= line.fga);
                }
            }
            assert_ne!(game.home_points, game.away_points);
        }
    }

    fn check_league(league: &League) {
        assert_eq!(league.teams.len(), 30);
        let years: Vec<i32> = league
            .seasons
            .iter()
            .map(|season| season.season_year)
            .collect();
        assert_eq!(years, SEASON_YEARS);
        for season in &league.seasons {
            check_season(season);
        }
        // Player ids are stable: most of a season's players were in the league the year before.
        for pair in league.seasons.windows(2) {
            let before: BTreeSet<u32> = pair[0].rosters.iter().map(|spot| spot.player_id).collect();
            let returning = pair[1]
                .rosters
                .iter()
                .filter(|spot| before.contains(&spot.player_id))
                .count();
            assert!(
                returning * 10 > pair[1].rosters.len() * 7,
                "{returning} returning players"
            );
        }
        let rows = league.box_score_rows();
        assert!((125_000..=150_000).contains(&rows), "{rows} box-score rows");
    }

    #[test]
    fn league_invariants_hold_for_several_seeds() {
        for seed in [42, 7, 2_024] {
            check_league(&league(seed));
        }
    }

    #[test]
    fn same_seed_same_bytes_and_other_seeds_differ() -> anyhow::Result<()> {
        let first = serde_json::to_string(&league(42))?;
        let again = serde_json::to_string(&league(42))?;
        assert!(first == again, "same seed, different output");
        let other = serde_json::to_string(&league(43))?;
        assert!(first != other, "different seeds, same output");
        Ok(())
    }

    #[test]
    fn calendars_match_the_real_seasons() {
        let calendar = super::SeasonCalendar::for_season(2023).expect("covered");
        assert_eq!(calendar.label(), "2023-24");
        assert_eq!(calendar.play_in_end.to_string(), "2024-04-19");
        // Thanksgiving 2023 was November 23rd.
        assert!(
            calendar
                .off_days
                .iter()
                .any(|day| day.to_string() == "2023-11-23")
        );
        assert!(super::SeasonCalendar::for_season(2025).is_none());
    }

    #[test]
    fn player_scoring_is_stable_enough_to_model() {
        // A player's points per game in the first half of a season predict the second half.
        let season = &league(42).seasons[0];
        let mut halves: BTreeMap<u32, [(u32, u32); 2]> = BTreeMap::new();
        let middle = season.games.len() / 2;
        for (index, game) in season.games.iter().enumerate() {
            for line in &game.players {
                let half =
                    &mut halves.entry(line.player_id).or_default()[usize::from(index >= middle)];
                half.0 += line.points;
                half.1 += 1;
            }
        }
        let pairs: Vec<(f64, f64)> = halves
            .values()
            .filter(|[first, second]| first.1 >= 20 && second.1 >= 20)
            .map(|[first, second]| {
                (
                    f64::from(first.0) / f64::from(first.1),
                    f64::from(second.0) / f64::from(second.1),
                )
            })
            .collect();
        let count = pairs.len() as f64;
        let mean = |pick: fn(&(f64, f64)) -> f64| pairs.iter().map(pick).sum::<f64>() / count;
        let (mean_x, mean_y) = (mean(|pair| pair.0), mean(|pair| pair.1));
        let covariance: f64 = pairs.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
        let spread_x: f64 = pairs.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
        let spread_y: f64 = pairs.iter().map(|(_, y)| (y - mean_y).powi(2)).sum();
        let correlation = covariance / (spread_x * spread_y).sqrt();
        assert!(correlation > 0.8, "correlation {correlation}");
    }
}
