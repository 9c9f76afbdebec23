//! `tuneprobe top`: a live per-workload view, or a periodic plain table when stdout is
//! not a terminal.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    kernel::loader::LoadOptions,
    kernel::loader::Probe,
    views::top::{self, Detail, Rates, Row},
    window::Collector,
};
use anyhow::Context as _;
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Paragraph, Row as TableRow, Table, TableState},
};

/// `top --sort`'s values: the columns' names.
fn column_names() -> Vec<&'static str> {
    top::columns().iter().map(|c| c.name).collect()
}

#[derive(Debug, clap::Args)]
#[command(
    about = "Live per-workload view: retransmits, drops, DNS, block IO p99, CPU throttling",
    long_about = "A live view of every workload on the node, refreshed every interval: \
                  retransmits/s, drops/s with the most frequent reason, DNS queries/s and \
                  p99, the block device with the slowest p99 service time, and the share of \
                  CPU periods throttled. Sort by any column, filter by namespace or pod, and \
                  open a workload for its histograms; the keys are listed on screen.\n\n\
                  When stdout is not a terminal, or with --once, it prints a plain table \
                  every interval instead (once with --once).",
    after_help = "Examples:\n  \
                  tuneprobe top\n  \
                  tuneprobe top --namespace shop --sort dns-p99\n  \
                  tuneprobe top --once --interval 5s"
)]
pub(super) struct Args {
    /// Refresh (and rate) interval.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::snapshot::parse_duration)]
    interval: Duration,

    /// Print one plain table after one interval and exit.
    #[arg(long)]
    once: bool,

    /// Column to sort by (the worst first).
    #[arg(long, default_value = "drops", value_parser = clap::builder::PossibleValuesParser::new(column_names()))]
    sort: String,

    /// Only pods in this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,

    /// Only this pod (name or UID, or part of one).
    #[arg(long, value_name = "POD")]
    pod: Option<String>,

    #[command(flatten)]
    collector: super::CollectorArgs,
}

pub(super) fn run(args: &Args, options: &LoadOptions) -> anyhow::Result<()> {
    let probe = Probe::load(options)?;
    crate::privileges::after_attach(crate::privileges::needs::OBSERVE);
    let collector = Collector::start_with(probe, args.collector.options()?)?;
    let filter = match (&args.namespace, &args.pod) {
        // The view filters on one text; with both, the pod narrows further below.
        (Some(ns), _) => format!("{ns}/"),
        (None, Some(pod)) => pod.clone(),
        (None, None) => String::new(),
    };
    if args.once || !std::io::stdout().is_terminal() {
        plain(args, collector, &filter)
    } else {
        interactive(args, collector, filter)
    }
}

fn keep(args: &Args, rows: &mut Vec<Row>) {
    if let Some(pod) = &args.pod {
        rows.retain(|r| top::matches(r, pod));
    }
}

fn plain(args: &Args, mut collector: Collector, filter: &str) -> anyhow::Result<()> {
    let statuses = collector.probe().statuses();
    let attached = statuses.iter().filter(|s| s.attached).count();
    eprintln!("ready: {attached} of {} programs attached", statuses.len());
    let stop = interrupt_flag()?;
    let mut rates = Rates::default();
    // The first report is the baseline: every later one covers exactly one interval.
    rates.update(&collector.report()?, 1.0);
    let mut last = Instant::now();
    loop {
        let deadline = last + args.interval;
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
        let snapshot = collector.report()?;
        let seconds = last.elapsed().as_secs_f64();
        last = Instant::now();
        let mut rows = rates.update(&snapshot, seconds);
        top::arrange(&mut rows, sort_column(args), false, filter);
        keep(args, &mut rows);
        let mut stdout = std::io::stdout().lock();
        let written = write!(stdout, "{}", top::table(&rows, seconds))
            .and_then(|()| writeln!(stdout))
            .and_then(|()| stdout.flush());
        match written {
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("writing the table")?,
        }
        if args.once {
            return Ok(());
        }
    }
}

fn sort_column(args: &Args) -> usize {
    // The parser admits column names only.
    top::column_named(&args.sort).unwrap_or(0)
}

fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing handlers")?;
    }
    Ok(stop)
}

/// The interactive view's state.
struct App {
    rows: Vec<Row>,
    /// The column sorted by, an index into `columns`.
    sort: usize,
    columns: Vec<top::TopColumn>,
    reverse: bool,
    filter: String,
    /// The filter being typed after `/`.
    editing: Option<String>,
    table: TableState,
    /// Key of the workload whose detail view is open.
    detail: Option<String>,
    seconds: f64,
    attached: (usize, usize),
    quit: bool,
}

const KEYS: &str = "q quit  ↑↓ select  Enter details  ←→ or 1-9 sort column  r reverse  \
                    / filter (pod, or ns/ for a namespace)  Esc back/clear";

fn interactive(args: &Args, mut collector: Collector, filter: String) -> anyhow::Result<()> {
    let statuses = collector.probe().statuses();
    let attached = (
        statuses.iter().filter(|s| s.attached).count(),
        statuses.len(),
    );
    let mut rates = Rates::default();
    rates.update(&collector.report()?, 1.0);
    let mut app = App {
        rows: Vec::new(),
        sort: sort_column(args),
        columns: top::columns(),
        reverse: false,
        filter,
        editing: None,
        table: TableState::default().with_selected(Some(0)),
        detail: None,
        seconds: args.interval.as_secs_f64(),
        attached,
        quit: false,
    };
    let mut all_rows: Vec<Row> = Vec::new();
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut last = Instant::now();
        while !app.quit {
            if last.elapsed() >= args.interval {
                let snapshot = collector.report()?;
                app.seconds = last.elapsed().as_secs_f64();
                last = Instant::now();
                all_rows = rates.update(&snapshot, app.seconds);
                keep(args, &mut all_rows);
            }
            app.rows = all_rows.clone();
            top::arrange(&mut app.rows, app.sort, app.reverse, &app.filter);
            let detail = app.detail.as_deref().and_then(|key| rates.detail(key));
            draw(&mut terminal, &mut app, detail.as_ref())?;
            let wait = args
                .interval
                .saturating_sub(last.elapsed())
                .min(Duration::from_millis(250));
            if event::poll(wait)?
                && let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                handle_key(&mut app, key.code, key.modifiers);
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

fn handle_key(app: &mut App, code: KeyCode, modifiers: KeyModifiers) {
    if let Some(text) = app.editing.as_mut() {
        match code {
            KeyCode::Enter => {
                app.filter = app.editing.take().unwrap_or_default();
                app.table.select(Some(0));
            }
            KeyCode::Esc => app.editing = None,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => {}
        }
        return;
    }
    let count = app.columns.len();
    match code {
        KeyCode::Char('q') => app.quit = true,
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => app.quit = true,
        KeyCode::Esc if app.detail.is_some() => app.detail = None,
        KeyCode::Esc => app.filter.clear(),
        KeyCode::Char('/') => app.editing = Some(String::new()),
        KeyCode::Down | KeyCode::Char('j') => app.table.select_next(),
        KeyCode::Up | KeyCode::Char('k') => app.table.select_previous(),
        KeyCode::Right | KeyCode::Char('>') => {
            app.sort = (app.sort + 1) % count;
        }
        KeyCode::Left | KeyCode::Char('<') => {
            app.sort = (app.sort + count - 1) % count;
        }
        KeyCode::Char(c @ '1'..='9') if usize::from(c as u8 - b'1') < count => {
            app.sort = usize::from(c as u8 - b'1');
        }
        KeyCode::Char('r') => app.reverse = !app.reverse,
        KeyCode::Enter => {
            let index = app.table.selected().unwrap_or(0);
            app.detail = app.rows.get(index).map(|r| r.key.clone());
        }
        _ => {}
    }
}

fn draw(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    detail: Option<&Detail>,
) -> anyhow::Result<()> {
    terminal
        .draw(|frame| {
            let [header, body, footer] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Min(0),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            let filter = match &app.editing {
                Some(text) => format!("filter: {text}_"),
                None if app.filter.is_empty() => "no filter".to_string(),
                None => format!("filter: {}", app.filter),
            };
            let title = format!(
                "tuneprobe top  every {:.1}s  sort: {}{}  {filter}  {} workloads  probes {}/{}",
                app.seconds,
                app.columns[app.sort].title,
                if app.reverse { " (reversed)" } else { "" },
                app.rows.len(),
                app.attached.0,
                app.attached.1,
            );
            frame.render_widget(Paragraph::new(title).bold(), header);
            frame.render_widget(Paragraph::new(KEYS).reversed(), footer);
            match detail {
                Some(detail) => draw_detail(frame, body, detail),
                None => draw_table(frame, body, app),
            }
        })
        .context("drawing the terminal")?;
    Ok(())
}

fn draw_table(frame: &mut Frame, area: ratatui::layout::Rect, app: &mut App) {
    let header = TableRow::new(app.columns.iter().enumerate().map(|(i, c)| {
        let title = format!("{}:{}", i + 1, c.title);
        if i == app.sort {
            Span::styled(
                title,
                Style::new().add_modifier(Modifier::UNDERLINED | Modifier::BOLD),
            )
        } else {
            Span::raw(title)
        }
    }));
    let rows = app.rows.iter().map(|row| {
        TableRow::new((0..app.columns.len()).map(|i| {
            let text = row.cell(i);
            if i == 0 {
                Line::from(text)
            } else {
                Line::from(text).right_aligned()
            }
        }))
    });
    let widths = app.columns.iter().enumerate().map(|(i, c)| match i {
        0 => Constraint::Min(24),
        _ => Constraint::Length(c.width as u16 + 2),
    });
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().reversed())
        .block(Block::bordered());
    if app.table.selected().is_some_and(|s| s >= app.rows.len()) {
        app.table.select(Some(app.rows.len().saturating_sub(1)));
    }
    frame.render_stateful_widget(table, area, &mut app.table);
}

fn draw_detail(frame: &mut Frame, area: ratatui::layout::Rect, detail: &Detail) {
    let mut lines: Vec<Line> = vec![
        Line::from(detail.name.clone()).bold(),
        Line::from(format!(
            "cgroup {}",
            detail.cgroup_path.as_deref().unwrap_or("-")
        )),
        Line::from(format!("since top started: {}", detail.totals.join(", "))),
    ];
    let width = usize::from(area.width).saturating_sub(40).clamp(10, 60);
    let mut section = |title: String, bars: Vec<(String, u64)>| {
        lines.push(Line::from(""));
        lines.push(Line::from(title).bold());
        if bars.is_empty() {
            lines.push(Line::from("  (no samples)"));
        }
        let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
        for (label, n) in bars {
            let len = ((n as f64 / max as f64) * width as f64).ceil() as usize;
            lines.push(Line::from(format!("  {label:>17} {} {n}", "█".repeat(len))));
        }
    };
    for (title, bars) in &detail.histograms {
        section(title.clone(), bars.clone());
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" details (Esc: back) ")),
        area,
    );
}
