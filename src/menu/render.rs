//! Drawing the menu: one pure function from an [`App`] to a frame.
//!
//! The screens are made for an 80×24 console first — a serial line or
//! the VGA text console of a rescue boot — and simply get roomier on a
//! larger terminal. Nothing is said by colour alone: a `>` marks the
//! selection, stages are labelled done/running/waiting, the progress bar
//! is `#` characters with the percentage beside it; colour and bold only
//! add emphasis. Every glyph drawn is in the VGA font's code page (CP437:
//! box drawing, arrows, ASCII), so the Linux console without a Unicode
//! font still shows all of it. Text that does not fit is cut with `...`;
//! a terminal too small for the menu gets a message saying so.

use std::ops::Range;

use ratatui::Frame;
use ratatui::layout::{Margin, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use super::app::{
    App, Choice, DONE_CHOICES, FAILED_CHOICES, ImageEntry, Listing, POWER_CHOICES, Popup, Run,
    RunProgress, Screen, SourceState, Stage, StageState, Summary, TargetEntry,
};
use crate::util::{clock, human_size};

/// Below this many columns or rows the menu only asks for a larger
/// terminal: the progress screen needs 12 rows to show its bar.
const MIN_WIDTH: u16 = 40;
const MIN_HEIGHT: u16 = 12;

/// Turned once per [`super::Event::Tick`] (about a second) while
/// something is being looked for, to show the menu is alive.
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

/// Where cut text ends; ASCII because "…" is not in the VGA font.
const ELLIPSIS: &str = "...";

/// Draws the menu's current state onto the whole frame.
pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let lines = wrap(
            &format!(
                "reimage: terminal too small ({}x{}, the menu needs {MIN_WIDTH}x{MIN_HEIGHT})",
                area.width, area.height
            ),
            usize::from(area.width),
        );
        frame.render_widget(Paragraph::new(plain(lines)), area);
        return;
    }
    let hint_row = Rect {
        y: area.bottom() - 1,
        height: 1,
        ..area
    };
    let main = Rect {
        height: area.height - 1,
        ..area
    };
    let spin = SPINNER[(app.ticks % SPINNER.len() as u64) as usize];
    match &app.screen {
        Screen::Images => draw_images(app, frame, main, spin),
        Screen::Targets { image } => draw_targets(app, image, frame, main, spin),
        Screen::Confirm {
            image,
            target,
            input,
            rejected,
        } => draw_confirm(image, target, input, rejected.as_deref(), frame, main),
        Screen::Progress(run) => draw_progress(run, frame, main, spin),
        Screen::Failed {
            run,
            message,
            choice,
        } => draw_failed(run, message, *choice, frame, main),
        Screen::Done {
            run,
            summary,
            choice,
        } => draw_done(run, summary, *choice, frame, main),
    }
    match app.popup {
        Some(Popup::Power { choice }) => draw_power(choice, frame, main),
        Some(Popup::Cancel { stop }) => draw_cancel(&app.screen, stop, frame, main),
        None => {}
    }
    frame.render_widget(Paragraph::new(hint_line(&hints(app))), hint_row);
}

// ----- the screens -----

fn draw_images(app: &App, frame: &mut Frame, area: Rect, spin: char) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let images: Vec<&ImageEntry> = app.images().collect();

    // One line per discovery that has nothing to list.
    let mut status = Vec::new();
    match &app.sources {
        // The scan has not said yet where it looks: the list says searching.
        None => {}
        Some(sources) if sources.is_empty() => status.push(Line::from(fit(
            "Nowhere to look for images: no catalog, no multicast network, no USB stick.",
            w,
        ))),
        Some(sources) => {
            for s in sources {
                let line = match &s.state {
                    SourceState::Searching => {
                        Line::from(fit(&format!("{spin} {}: searching...", s.label), w))
                    }
                    SourceState::Failed(e) => Line::styled(
                        fit(&format!("! {}: failed: {e}", s.label), w),
                        Style::new().add_modifier(Modifier::BOLD).fg(Color::Red),
                    ),
                    SourceState::Found(v) if v.is_empty() => {
                        Line::from(fit(&format!("- {}: no images found", s.label), w))
                    }
                    SourceState::Found(_) => continue,
                };
                status.push(line);
            }
        }
    }

    let mut body = inner;
    let status_rows = status
        .len()
        .min(usize::from(inner.height.saturating_sub(4)));
    if status_rows > 0 {
        let rows = take_bottom(&mut body, status_rows as u16);
        take_bottom(&mut body, 1);
        frame.render_widget(Paragraph::new(status), rows);
    }

    let mut corner = None;
    if images.is_empty() {
        let lines = if app.scan_complete() {
            vec![
                "No images found.".to_string(),
                String::new(),
                "Press r to search again, or s to open a shell.".to_string(),
            ]
        } else {
            vec![format!("{spin} Searching for images...")]
        };
        frame.render_widget(Paragraph::new(plain(lines)), body);
    } else {
        let heights: Vec<usize> = images
            .iter()
            .map(|e| 2 + usize::from(e.description.is_some()))
            .collect();
        let sel = app.image_sel.min(images.len() - 1);
        let shown = window(&heights, sel, usize::from(body.height));
        corner = Some(count_title(&shown, images.len(), "image", "images"));
        let mut lines = Vec::new();
        for i in shown {
            lines.extend(image_lines(images[i], i == sel, w));
        }
        frame.render_widget(Paragraph::new(lines), body);
    }
    draw_block(frame, area, "Step 1 of 3: choose an image", corner);
}

fn image_lines(e: &ImageEntry, selected: bool, w: usize) -> Vec<Line<'static>> {
    // "> name ........ 12.0 GiB  HTTP catalog"
    const SIZE: usize = 10;
    const KIND: usize = 12;
    // Capped so size and kind stay near the name on a wide terminal.
    let name_w = w.saturating_sub(2 + 1 + SIZE + 2 + KIND).min(60);
    let size = e.size.map_or_else(|| "size ?".to_string(), human_size);
    let head = format!(
        "{}{} {}  {}",
        marker(selected),
        pad(&e.name, name_w),
        pad_left(&size, SIZE),
        pad(e.kind.label(), KIND)
    );
    let mut lines = vec![Line::styled(head, selected_style(selected))];
    if let Some(d) = &e.description {
        lines.push(Line::from(fit(&format!("    {d}"), w)));
    }
    lines.push(Line::styled(fit(&format!("    {}", e.location), w), dim()));
    lines
}

fn draw_targets(app: &App, image: &ImageEntry, frame: &mut Frame, area: Rect, spin: char) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let mut body = inner;
    let top = take_top(&mut body, 2);
    frame.render_widget(
        Paragraph::new(Line::from(fit(&format!("Image: {}", image_desc(image)), w))),
        top,
    );
    let mut corner = None;
    match &app.targets {
        Listing::Pending => {
            frame.render_widget(Paragraph::new(format!("{spin} Looking for disks...")), body);
        }
        Listing::Failed(e) => {
            let mut lines = vec!["Could not list the disks:".to_string()];
            lines.extend(
                wrap(e, w.saturating_sub(2))
                    .into_iter()
                    .map(|l| format!("  {l}")),
            );
            lines.push(String::new());
            lines.push("Press r to try again, or Esc to choose another image.".to_string());
            frame.render_widget(Paragraph::new(plain(lines)), body);
        }
        Listing::Ready(disks) if disks.is_empty() => {
            let mut lines = wrap(
                "No disk to restore onto was found. The disk this system started \
                 from is never offered.",
                w,
            );
            lines.push(String::new());
            lines.push("Connect a disk and press r to look again.".to_string());
            frame.render_widget(Paragraph::new(plain(lines)), body);
        }
        Listing::Ready(disks) => {
            let warn = take_bottom(&mut body, 1);
            take_bottom(&mut body, 1);
            frame.render_widget(
                Paragraph::new(Line::styled(
                    fit("The disk you choose will be erased completely.", w),
                    warning(),
                )),
                warn,
            );
            let heights = vec![3; disks.len()];
            let sel = app.target_sel.min(disks.len() - 1);
            let shown = window(&heights, sel, usize::from(body.height));
            corner = Some(count_title(&shown, disks.len(), "disk", "disks"));
            let mut lines = Vec::new();
            for i in shown {
                lines.extend(target_lines(&disks[i], i == sel, w));
            }
            frame.render_widget(Paragraph::new(lines), body);
        }
    }
    draw_block(frame, area, "Step 2 of 3: choose the disk to erase", corner);
}

fn target_lines(t: &TargetEntry, selected: bool, w: usize) -> Vec<Line<'static>> {
    // "> nvme0n1      Samsung SSD 970 EVO Plus 500GB    500.0 GiB  nvme"
    const NAME: usize = 12;
    const SIZE: usize = 10;
    const TRANSPORT: usize = 6;
    let model_w = w
        .saturating_sub(2 + NAME + 1 + 1 + SIZE + 2 + TRANSPORT)
        .min(48);
    let head = format!(
        "{}{} {} {}  {}",
        marker(selected),
        pad(&t.name, NAME),
        pad(model(t), model_w),
        pad_left(&human_size(t.size), SIZE),
        pad(&t.transport, TRANSPORT)
    );
    let serial = t.serial.as_deref().unwrap_or("unknown");
    let parts = if t.partitions.is_empty() {
        "no partitions".to_string()
    } else {
        let list: Vec<String> = t.partitions.iter().map(part_desc).collect();
        format!("on it: {}", list.join(", "))
    };
    vec![
        Line::styled(head, selected_style(selected)),
        Line::styled(
            fit(&format!("    serial {serial}   {}", t.path.display()), w),
            dim(),
        ),
        Line::from(fit(&format!("    {parts}"), w)),
    ]
}

fn draw_confirm(
    image: &ImageEntry,
    target: &TargetEntry,
    input: &str,
    rejected: Option<&str>,
    frame: &mut Frame,
    area: Rect,
) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let name = &target.name;
    let label = |l: &str| {
        Span::styled(
            format!("  {l:<9}"),
            Style::new().add_modifier(Modifier::BOLD),
        )
    };
    let value = |s: String| Span::raw(fit(&s, w.saturating_sub(11)));
    let mut lines = vec![
        Line::styled(
            fit(&format!("WARNING: EVERYTHING ON {name} WILL BE ERASED."), w),
            warning(),
        ),
        Line::default(),
        Line::from(vec![
            label("Disk"),
            value(format!("{name} ({})", target.path.display())),
        ]),
        Line::from(vec![label("Model"), value(model(target).to_string())]),
        Line::from(vec![
            label("Size"),
            value(format!(
                "{}, {}, serial {}",
                human_size(target.size),
                target.transport,
                target.serial.as_deref().unwrap_or("unknown")
            )),
        ]),
    ];
    let prompt = wrap(
        &format!("Type {name} and press Enter to erase it and restore the image onto it:"),
        w,
    );
    let rejected = rejected.map(|r| {
        let msg = if r.trim().is_empty() {
            format!("Nothing was typed. Type {name} to erase it, or press Esc to go back.")
        } else {
            format!(
                "\"{}\" is not this disk's name. Type {name} exactly, or press Esc to go back.",
                r.trim()
            )
        };
        wrap(&msg, w)
    });

    // What is on the disk now: one partition a line, as many as the
    // rest leaves room for (room for a two-line rejection is kept, so
    // the screen does not jump when one appears).
    let below = 4 + prompt.len() + 1 + 1 + rejected.as_ref().map_or(2, |r| r.len().max(2));
    let room = usize::from(inner.height)
        .saturating_sub(lines.len() + below)
        .max(1);
    if target.partitions.is_empty() {
        lines.push(Line::from(vec![
            label("On it"),
            value("no partitions (any data on it is lost too)".to_string()),
        ]));
    } else {
        let n = target.partitions.len();
        let listed = if n <= room {
            n
        } else {
            room.saturating_sub(1).max(1)
        };
        for (i, p) in target.partitions.iter().take(listed).enumerate() {
            let l = if i == 0 { label("On it") } else { label("") };
            lines.push(Line::from(vec![l, value(part_desc(p))]));
        }
        if listed < n {
            lines.push(Line::from(vec![
                label(""),
                value(format!("and {} more partitions", n - listed)),
            ]));
        }
    }
    lines.push(Line::default());
    lines.push(Line::from(vec![label("Image"), value(image_desc(image))]));
    lines.push(Line::from(vec![label(""), value(image.location.clone())]));
    lines.push(Line::default());
    lines.extend(prompt.into_iter().map(Line::from));

    // The field: brackets so it shows without colour; the end of a long
    // input stays visible.
    let field_w = (name.chars().count() + 8).max(24).min(w.saturating_sub(4));
    let shown = tail(input, field_w.saturating_sub(1));
    lines.push(Line::from(vec![
        Span::raw("  "),
        Span::styled(
            format!("[{}]", pad(&shown, field_w)),
            Style::new().add_modifier(Modifier::BOLD),
        ),
    ]));
    let field_row = lines.len() - 1;
    if let Some(r) = rejected {
        lines.push(Line::default());
        lines.extend(r.into_iter().map(|l| Line::styled(l, warning())));
    }
    let y = inner.y + field_row as u16;
    if y < inner.bottom() {
        let x = inner.x + 3 + width(&shown) as u16;
        frame.set_cursor_position(Position::new(x.min(inner.right().saturating_sub(1)), y));
    }
    frame.render_widget(Paragraph::new(lines), inner);
    draw_block(frame, area, "Step 3 of 3: confirm erasing the disk", None);
}

fn draw_progress(run: &Run, frame: &mut Frame, area: Rect, spin: char) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let p = &run.progress;
    let mut lines = run_heading(run, w);
    lines.push(Line::default());
    for (i, stage) in Stage::ALL.into_iter().enumerate() {
        let (state, style) = match p.stages[i] {
            StageState::Done => ("[done]", Style::new().fg(Color::Green)),
            StageState::Running => ("[running]", Style::new().add_modifier(Modifier::BOLD)),
            StageState::Waiting => ("[waiting]", dim()),
        };
        let what = match stage {
            Stage::Validate => "check the image and the disk",
            Stage::Restore => "write the image onto the disk",
            Stage::Verify => "read the disk back and compare",
        };
        lines.push(Line::styled(
            fit(
                &format!("  {state:<10} {}. {:<9} {what}", i + 1, stage.name()),
                w,
            ),
            style,
        ));
    }
    lines.push(Line::default());
    lines.extend(gauge_lines(p, w, spin));
    if let Some((loss, passes)) = p.multicast {
        lines.push(Line::from(fit(
            &format!(
                "Multicast: {loss:.1}% of packets lost, {passes} {} of the stream seen",
                if passes == 1 { "pass" } else { "passes" }
            ),
            w,
        )));
    }
    let room = usize::from(inner.height).saturating_sub(lines.len() + 2);
    if room > 0 && !p.log.is_empty() {
        lines.push(Line::default());
        lines.push(Line::styled(rule("Log", w), dim()));
        let skip = p.log.len().saturating_sub(room);
        for l in p.log.iter().skip(skip) {
            lines.push(Line::from(fit(l, w)));
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
    let title = if run.stopping {
        "Stopping the restore..."
    } else {
        "Restoring"
    };
    draw_block(frame, area, title, None);
}

/// The bar and the numbers under it.
fn gauge_lines(p: &RunProgress, w: usize, spin: char) -> Vec<Line<'static>> {
    let doing = match p.stage() {
        None => {
            return vec![Line::from(format!("{spin} Starting the restore..."))];
        }
        Some(Stage::Validate) => "Validating",
        Some(Stage::Restore) => "Restoring",
        Some(Stage::Verify) => "Verifying",
    };
    let mut lines = Vec::new();
    if p.total > 0 {
        let pct = (p.done.min(p.total) as u128 * 100 / p.total as u128) as u64;
        let bar_w = w.saturating_sub(11 + 2 + 6);
        let filled = (p.done.min(p.total) as u128 * bar_w as u128 / p.total as u128) as usize;
        lines.push(Line::from(vec![
            Span::styled(
                format!("{doing:<11}"),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw("["),
            Span::styled("#".repeat(filled), Style::new().fg(Color::Green)),
            Span::raw(".".repeat(bar_w - filled)),
            Span::raw("]"),
            Span::styled(
                format!(" {pct:>3}%"),
                Style::new().add_modifier(Modifier::BOLD),
            ),
        ]));
    } else {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{doing:<11}"),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("{spin} working...")),
        ]));
    }
    let mut facts = Vec::new();
    if p.total > 0 {
        facts.push(format!(
            "{} of {}",
            human_size(p.done.min(p.total)),
            human_size(p.total)
        ));
    }
    if let Some(rate) = p.rate {
        facts.push(format!("{}/s", human_size(rate as u64)));
    }
    if let Some(eta) = p.eta() {
        facts.push(format!("{} left", clock(eta)));
    }
    if let Some(elapsed) = p.elapsed() {
        facts.push(format!("{} elapsed", clock(elapsed)));
    }
    if !facts.is_empty() {
        lines.push(Line::from(fit(
            &format!("{:11}{}", "", facts.join("   ")),
            w,
        )));
    }
    lines
}

fn draw_failed(run: &Run, message: &str, choice: usize, frame: &mut Frame, area: Rect) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let name = &run.target.name;
    let mut lines = run_heading(run, w);
    lines.push(Line::default());
    // The worker's message is shown after a stop too: it says whether
    // the erase that follows a stop worked.
    if run.stopping {
        lines.push(Line::styled("You stopped the restore:", warning()));
    } else {
        lines.push(Line::styled("The restore failed:", warning()));
    }

    let state = if run.progress.writing {
        format!("{name} has been erased: it holds an empty partition table now.")
    } else {
        format!("Nothing was written: {name} is as it was.")
    };
    let mut after = vec![Line::default()];
    after.extend(wrap(&state, w).into_iter().map(Line::from));
    after.extend(
        wrap(
            "Retry (you confirm again), choose another image or disk, or open a shell \
             to look into it (exit the shell to come back here).",
            w,
        )
        .into_iter()
        .map(Line::from),
    );
    after.push(Line::default());
    after.extend(choice_lines(&FAILED_CHOICES, choice, w));

    // The message gets the rows the rest leaves, at least one.
    let room = usize::from(inner.height)
        .saturating_sub(lines.len() + after.len())
        .max(1);
    let wrapped = wrap(message, w.saturating_sub(2));
    let cut = wrapped.len() > room;
    for (i, l) in wrapped.iter().take(room).enumerate() {
        let l = if cut && i + 1 == room {
            fit(&format!("{l}{ELLIPSIS}"), w.saturating_sub(2))
        } else {
            l.clone()
        };
        lines.push(Line::from(format!("  {l}")));
    }
    lines.extend(after);
    frame.render_widget(Paragraph::new(lines), inner);
    let title = if run.stopping {
        "The restore was stopped"
    } else {
        "The restore failed"
    };
    draw_block(frame, area, title, None);
}

fn draw_done(run: &Run, summary: &Summary, choice: usize, frame: &mut Frame, area: Rect) {
    let inner = inner_of(area);
    let w = usize::from(inner.width);
    let mut lines = run_heading(run, w);
    lines.push(Line::default());
    lines.push(Line::styled(
        fit("The restore is complete.", w),
        Style::new().add_modifier(Modifier::BOLD).fg(Color::Green),
    ));
    lines.push(Line::default());
    let secs = summary.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(
            " ({}/s)",
            human_size((summary.written as f64 / secs) as u64)
        )
    } else {
        String::new()
    };
    let fact = |l: &str, v: String| fit(&format!("  {l:<10}{v}"), w);
    lines.push(Line::from(fact("Written", human_size(summary.written))));
    lines.push(Line::from(fact(
        "Time",
        format!("{}{rate}", clock(summary.elapsed)),
    )));
    lines.push(Line::from(fact(
        "Verified",
        if summary.verified {
            "yes: everything written was read back and matched".to_string()
        } else {
            "no: verification was switched off".to_string()
        },
    )));
    lines.push(Line::default());
    lines.extend(choice_lines(&DONE_CHOICES, choice, w));
    frame.render_widget(Paragraph::new(lines), inner);
    draw_block(frame, area, "Restore complete", None);
}

/// The image and the disk of a run, two lines.
fn run_heading(run: &Run, w: usize) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let value = |s: String| Span::raw(fit(&s, w.saturating_sub(7)));
    vec![
        Line::from(vec![
            Span::styled("Image  ", bold),
            value(image_desc(&run.image)),
        ]),
        Line::from(vec![
            Span::styled("Disk   ", bold),
            value(format!(
                "{}, {}, {}",
                run.target.name,
                model(&run.target),
                human_size(run.target.size)
            )),
        ]),
    ]
}

// ----- popups -----

fn draw_power(choice: usize, frame: &mut Frame, area: Rect) {
    let w = 32;
    let rect = centered(area, w, POWER_CHOICES.len() as u16 + 4);
    frame.render_widget(Clear, rect);
    let block = Block::bordered().title(" Power ");
    let inner = block.inner(rect).inner(Margin::new(1, 1));
    frame.render_widget(block, rect);
    frame.render_widget(
        Paragraph::new(choice_lines(
            &POWER_CHOICES,
            choice,
            usize::from(inner.width),
        )),
        inner,
    );
}

fn draw_cancel(screen: &Screen, stop: bool, frame: &mut Frame, area: Rect) {
    // Below the bar, so the progress stays in sight while deciding.
    let h = 8;
    let mut rect = centered(area, 50, h);
    rect.y = rect.y.max(area.bottom().saturating_sub(h + 2));
    frame.render_widget(Clear, rect);
    let block = Block::bordered()
        .title(" Stop the restore? ")
        .border_style(warning());
    let inner = block.inner(rect).inner(Margin::new(1, 0));
    frame.render_widget(block, rect);
    let w = usize::from(inner.width);
    let text = match screen {
        Screen::Progress(run) if run.progress.writing => format!(
            "{} is already being written: stopping now leaves it erased, with no data on it.",
            run.target.name
        ),
        Screen::Progress(run) => format!(
            "Nothing has been written yet: stopping now leaves {} as it is.",
            run.target.name
        ),
        _ => "Stop the restore?".to_string(),
    };
    let mut lines: Vec<Line> = vec![Line::default()];
    lines.extend(wrap(&text, w).into_iter().map(Line::from));
    lines.push(Line::default());
    let button = |label: &str, on: bool| {
        if on {
            Span::styled(format!("> {label} <"), selected_style(true))
        } else {
            Span::raw(format!("  {label}  "))
        }
    };
    lines.push(
        Line::from(vec![
            button("Keep going", !stop),
            Span::raw("    "),
            button("Stop", stop),
        ])
        .centered(),
    );
    frame.render_widget(Paragraph::new(lines), inner);
}

// ----- hints -----

fn hints(app: &App) -> Vec<(&'static str, &'static str)> {
    const MOVE: (&str, &str) = ("↑↓ PgUp PgDn", "move");
    match app.popup {
        Some(Popup::Power { .. }) => {
            return vec![("↑↓", "choose"), ("Enter", "select"), ("Esc", "back")];
        }
        Some(Popup::Cancel { .. }) => {
            return vec![
                ("y", "stop"),
                ("n", "keep going"),
                ("←→", "switch"),
                ("Enter", "select"),
            ];
        }
        None => {}
    }
    match &app.screen {
        Screen::Images => vec![
            MOVE,
            ("Enter", "choose"),
            ("r", "rescan"),
            ("s", "shell"),
            ("q/Esc", "power menu"),
        ],
        Screen::Targets { .. } => vec![MOVE, ("Enter", "choose"), ("r", "rescan"), ("Esc", "back")],
        Screen::Confirm { .. } => vec![
            ("Enter", "erase and restore"),
            ("Backspace Ctrl-U", "correct"),
            ("Esc", "back"),
        ],
        Screen::Progress(run) if run.stopping => vec![("", "Stopping, please wait...")],
        Screen::Progress(_) => vec![("Esc/q", "stop the restore")],
        Screen::Failed { .. } | Screen::Done { .. } => {
            vec![("↑↓", "choose"), ("Enter", "select")]
        }
    }
}

fn hint_line(keys: &[(&'static str, &'static str)]) -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    for (i, (k, what)) in keys.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw("   "));
        }
        if !k.is_empty() {
            spans.push(Span::styled(
                *k,
                Style::new().add_modifier(Modifier::REVERSED),
            ));
            spans.push(Span::raw(" "));
        }
        spans.push(Span::raw(*what));
    }
    Line::from(spans)
}

// ----- building blocks -----

/// The screen's frame with its title; the area inside is [`inner_of`].
fn draw_block(frame: &mut Frame, area: Rect, title: &str, corner: Option<String>) {
    let mut block = Block::bordered().title(Line::styled(
        format!(" reimage: {title} "),
        Style::new().add_modifier(Modifier::BOLD),
    ));
    if let Some(c) = corner {
        block = block.title_top(Line::from(c).right_aligned());
    }
    frame.render_widget(block, area);
}

/// Inside the border, with a column of space either side.
fn inner_of(area: Rect) -> Rect {
    Block::bordered().inner(area).inner(Margin::new(1, 0))
}

fn take_top(rect: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(rect.height);
    let top = Rect {
        height: rows,
        ..*rect
    };
    rect.y += rows;
    rect.height -= rows;
    top
}

fn take_bottom(rect: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(rect.height);
    rect.height -= rows;
    Rect {
        y: rect.y + rect.height,
        height: rows,
        ..*rect
    }
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// The entries shown for a selection: the lists move a page at a time
/// (pages as the entries' heights fill `rows`), so the view stays put
/// while the selection moves within it. Always at least the selection.
fn window(heights: &[usize], sel: usize, rows: usize) -> Range<usize> {
    let mut start = 0;
    while start < heights.len() {
        let mut end = start;
        let mut used = 0;
        while end < heights.len() && (end == start || used + heights[end] <= rows) {
            used += heights[end];
            end += 1;
        }
        if sel < end {
            return start..end;
        }
        start = end;
    }
    0..0
}

/// " 7-12 of 20 disks " when scrolled, " 3 disks " when all fit.
fn count_title(shown: &Range<usize>, n: usize, one: &str, many: &str) -> String {
    let noun = if n == 1 { one } else { many };
    if shown.len() == n {
        format!(" {n} {noun} ")
    } else {
        format!(" {}-{} of {n} {noun} ", shown.start + 1, shown.end)
    }
}

fn choice_lines(choices: &[Choice], sel: usize, w: usize) -> Vec<Line<'static>> {
    choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Line::styled(
                fit(&format!("{}{}", marker(i == sel), c.label()), w),
                selected_style(i == sel),
            )
        })
        .collect()
}

fn image_desc(e: &ImageEntry) -> String {
    match e.size {
        Some(size) => format!("{}, {}, {}", e.name, human_size(size), e.kind.label()),
        None => format!("{}, {}", e.name, e.kind.label()),
    }
}

fn model(t: &TargetEntry) -> &str {
    t.model.as_deref().unwrap_or("(unknown model)")
}

fn part_desc(p: &super::app::PartEntry) -> String {
    match &p.label {
        Some(l) => format!("{} \"{l}\" {}", p.name, human_size(p.size)),
        None => format!("{} {}", p.name, human_size(p.size)),
    }
}

fn marker(selected: bool) -> &'static str {
    if selected { "> " } else { "  " }
}

fn selected_style(selected: bool) -> Style {
    if selected {
        Style::new().add_modifier(Modifier::REVERSED)
    } else {
        Style::new()
    }
}

fn warning() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn plain(lines: Vec<String>) -> Vec<Line<'static>> {
    lines.into_iter().map(Line::from).collect()
}

/// "─ Log ───…" across `w` columns.
fn rule(label: &str, w: usize) -> String {
    let head = format!("─ {label} ");
    let n = w.saturating_sub(width(&head));
    fit(&format!("{head}{}", "─".repeat(n)), w)
}

// ----- text measuring -----

/// Columns `s` takes on the terminal.
fn width(s: &str) -> usize {
    Span::raw(s).width()
}

fn char_width(c: char) -> usize {
    width(c.encode_utf8(&mut [0; 4]))
}

/// Control characters (from a catalog, an error, a disk's label) would
/// move the cursor: they show as spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` on one line of at most `max` columns, cut with "..." if longer.
fn fit(s: &str, max: usize) -> String {
    let s = clean(s);
    if width(&s) <= max {
        return s;
    }
    let keep = max.saturating_sub(ELLIPSIS.len());
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = char_width(c);
        if w + cw > keep {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push_str(&ELLIPSIS[..max.min(ELLIPSIS.len())]);
    out
}

/// [`fit`], then spaces up to exactly `w` columns.
fn pad(s: &str, w: usize) -> String {
    let s = fit(s, w);
    let n = w.saturating_sub(width(&s));
    format!("{s}{}", " ".repeat(n))
}

/// [`fit`], right-aligned in `w` columns.
fn pad_left(s: &str, w: usize) -> String {
    let s = fit(s, w);
    let n = w.saturating_sub(width(&s));
    format!("{}{s}", " ".repeat(n))
}

/// The end of `s` that fits in `max` columns.
fn tail(s: &str, max: usize) -> String {
    let s = clean(s);
    let mut w = 0;
    let mut start = s.len();
    for (i, c) in s.char_indices().rev() {
        let cw = char_width(c);
        if w + cw > max {
            break;
        }
        w += cw;
        start = i;
    }
    s[start..].to_string()
}

/// Words filled into lines of at most `w` columns; a word longer than a
/// line is split. Line breaks in `text` are kept.
fn wrap(text: &str, w: usize) -> Vec<String> {
    let w = w.max(1);
    let mut out = Vec::new();
    for para in text.lines() {
        let mut line = String::new();
        let mut lw = 0;
        for word in para.split_whitespace() {
            let word = clean(word);
            let ww = width(&word);
            if lw > 0 && lw + 1 + ww > w {
                out.push(std::mem::take(&mut line));
                lw = 0;
            }
            if ww > w {
                for c in word.chars() {
                    let cw = char_width(c);
                    if lw + cw > w && lw > 0 {
                        out.push(std::mem::take(&mut line));
                        lw = 0;
                    }
                    line.push(c);
                    lw += cw;
                }
                continue;
            }
            if lw > 0 {
                line.push(' ');
                lw += 1;
            }
            line.push_str(&word);
            lw += ww;
        }
        out.push(line);
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

#[cfg(test)]
mod tests {
    //! Every screen in every state, drawn on a `TestBackend` and compared
    //! with the snapshots in `snapshots/` (review changes with
    //! `cargo insta review`, or `INSTA_UPDATE=always` and `git diff`).

    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use crossterm::event::KeyCode;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::menu::app::tests::{disk, key, typed, with_images};
    use crate::menu::{Event, ImageKind, PartEntry, ProgressEvent};
    use crate::progress::Phase;

    /// The frame as text: one line a row, trailing spaces cut.
    fn text(buf: &Buffer) -> String {
        let w = usize::from(buf.area.width).max(1);
        let mut out = String::new();
        for row in buf.content.chunks(w) {
            let mut line = String::new();
            let mut skip = 0;
            for cell in row {
                if skip == 0 {
                    line.push_str(cell.symbol());
                }
                skip = skip.max(width(cell.symbol())).saturating_sub(1);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn draw_sized(app: &App, w: u16, h: u16) -> (String, Terminal<TestBackend>) {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| render(app, f)).unwrap();
        (text(term.backend().buffer()), term)
    }

    fn draw(app: &App, w: u16, h: u16) -> String {
        draw_sized(app, w, h).0
    }

    /// Checks the 80×24 drawing against `snapshots/…__NAME.snap`.
    fn snap(name: &str, app: &App) -> String {
        snap_at(name, app, 80, 24)
    }

    fn snap_at(name: &str, app: &App, w: u16, h: u16) -> String {
        let t = draw(app, w, h);
        snap_text(name, &t, w, h);
        t
    }

    fn snap_text(name: &str, t: &str, w: u16, h: u16) {
        insta::with_settings!({ omit_expression => true, description => format!("{w}x{h}") }, {
            insta::assert_snapshot!(name, t);
        });
    }

    fn entry(name: &str, size: Option<u64>, kind: ImageKind, location: &str) -> ImageEntry {
        ImageEntry {
            name: name.into(),
            size,
            kind,
            location: location.into(),
            description: None,
        }
    }

    const CATALOG: &str = "catalog http://10.0.0.1/images.json";

    fn discovering(app: &mut App) {
        app.update(Event::Discovering(vec![
            CATALOG.into(),
            "multicast".into(),
            "USB stick".into(),
        ]));
    }

    fn catalog_images() -> Vec<ImageEntry> {
        let mut ubuntu = entry(
            "ubuntu-24.04-lab",
            Some(9_663_676_416),
            ImageKind::Catalog,
            "http://10.0.0.1/ubuntu-24.04-lab.rimg",
        );
        ubuntu.description = Some("Ubuntu 24.04 LTS with the lab's compilers and tools".into());
        vec![
            ubuntu,
            entry(
                "windows-11-classroom",
                Some(38 << 30),
                ImageKind::Catalog,
                "http://10.0.0.1/windows-11-classroom.rimg",
            ),
            entry(
                "debian-12-minimal",
                Some(1_610_612_736),
                ImageKind::Catalog,
                "http://10.0.0.1/debian-12-minimal.rimg",
            ),
        ]
    }

    fn multicast_images() -> Vec<ImageEntry> {
        vec![entry(
            "lab-2024 (room 101)",
            None,
            ImageKind::Multicast,
            "mcast://239.255.42.1:4242",
        )]
    }

    /// The picker with a catalog, a multicast stream and an empty stick.
    fn images_found() -> App {
        let mut app = App::new();
        app.start();
        discovering(&mut app);
        app.update(Event::Images {
            from: CATALOG.into(),
            result: Ok(catalog_images()),
        });
        app.update(Event::Images {
            from: "multicast".into(),
            result: Ok(multicast_images()),
        });
        app.update(Event::Images {
            from: "USB stick".into(),
            result: Ok(vec![]),
        });
        app
    }

    fn nvme() -> TargetEntry {
        let part = |n: u32, size: u64, label: Option<&str>| PartEntry {
            name: format!("nvme0n1p{n}"),
            size,
            label: label.map(Into::into),
        };
        TargetEntry {
            partitions: vec![
                part(1, 512 << 20, Some("EFI system partition")),
                part(2, 16 << 20, Some("Microsoft reserved partition")),
                part(3, 464 << 30, Some("Basic data partition")),
                part(4, 800 << 20, None),
            ],
            ..disk("nvme0n1")
        }
    }

    fn disks() -> Vec<TargetEntry> {
        vec![
            nvme(),
            TargetEntry {
                name: "sda".into(),
                path: PathBuf::from("/dev/sda"),
                size: 2_000_398_934_016,
                model: Some("WDC WD20EZBX-00AYRA0".into()),
                serial: Some("WD-WX12A3456789".into()),
                transport: "sata".into(),
                partitions: vec![PartEntry {
                    name: "sda1".into(),
                    size: 2_000_397_885_440,
                    label: Some("backup".into()),
                }],
            },
            TargetEntry {
                name: "vdb".into(),
                path: PathBuf::from("/dev/vdb"),
                size: 64 << 30,
                model: None,
                serial: None,
                transport: "virtio".into(),
                partitions: vec![],
            },
        ]
    }

    fn at_targets(listing: Option<Result<Vec<TargetEntry>, String>>) -> App {
        let mut app = images_found();
        app.update(key(KeyCode::Enter));
        if let Some(l) = listing {
            app.update(Event::Targets(l));
        }
        app
    }

    fn confirm() -> App {
        let mut app = at_targets(Some(Ok(disks())));
        app.update(key(KeyCode::Enter));
        assert!(matches!(app.screen, Screen::Confirm { .. }));
        app
    }

    fn progress(app: &mut App, events: Vec<ProgressEvent>) {
        for e in events {
            assert!(app.update(Event::Progress(e)).is_empty());
        }
    }

    fn started() -> App {
        let mut app = confirm();
        typed(&mut app, "nvme0n1");
        app.update(key(KeyCode::Enter));
        assert!(matches!(app.screen, Screen::Progress(_)));
        app
    }

    /// Validation done, the copy 42% through at about 100 MiB/s.
    fn restoring(t0: Instant) -> App {
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut app = validating(t0);
        let total = 10u64 << 30;
        let mut evs = vec![
            ProgressEvent::Finish {
                phase: Phase::ValidateTarget,
                at: at(1.0),
            },
            ProgressEvent::Start {
                phase: Phase::Restore,
                total,
                at: at(1.0),
            },
            ProgressEvent::Note("Erased the first MiB of /dev/nvme0n1; it is written last".into()),
        ];
        for s in 0..=42u64 {
            evs.push(ProgressEvent::Update {
                phase: Phase::Restore,
                done: s * (100 << 20),
                total,
                at: at(1.0 + s as f64),
            });
        }
        evs.push(ProgressEvent::Update {
            phase: Phase::Restore,
            done: 4301 << 20,
            total,
            at: at(44.0),
        });
        progress(&mut app, evs);
        app
    }

    fn validating(t0: Instant) -> App {
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut app = started();
        progress(
            &mut app,
            vec![
                ProgressEvent::Start {
                    phase: Phase::ValidateSource,
                    total: 0,
                    at: at(0.0),
                },
                ProgressEvent::Note("Restoring from http://10.0.0.1/ubuntu-24.04-lab.rimg".into()),
                ProgressEvent::Finish {
                    phase: Phase::ValidateSource,
                    at: at(0.4),
                },
                ProgressEvent::Start {
                    phase: Phase::ValidateTarget,
                    total: 0,
                    at: at(0.4),
                },
                ProgressEvent::Note("Validating target /dev/nvme0n1 (476.9 GiB)".into()),
            ],
        );
        app
    }

    fn verifying(t0: Instant) -> App {
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut app = restoring(t0);
        let total = 10u64 << 30;
        progress(
            &mut app,
            vec![
                ProgressEvent::Finish {
                    phase: Phase::Restore,
                    at: at(104.0),
                },
                ProgressEvent::Note("Restored 9.0 GiB in 1:43".into()),
                ProgressEvent::Start {
                    phase: Phase::Verify,
                    total,
                    at: at(104.0),
                },
                ProgressEvent::Update {
                    phase: Phase::Verify,
                    done: 8 << 30,
                    total,
                    at: at(104.0),
                },
                ProgressEvent::Update {
                    phase: Phase::Verify,
                    done: 9 << 30,
                    total,
                    at: at(106.0),
                },
            ],
        );
        app
    }

    fn failed() -> App {
        let mut app = restoring(Instant::now());
        app.update(Event::Finished(Err(
            "writing chunk 4301 to /dev/nvme0n1 at offset 4.2 GiB: Input/output error \
             (os error 5)\nthe disk reported a media error; it may be failing"
                .into(),
        )));
        app
    }

    fn done(verified: bool) -> App {
        let mut app = verifying(Instant::now());
        app.update(Event::Finished(Ok(Summary {
            written: 9_126_805_504,
            elapsed: Duration::from_secs(107),
            verified,
        })));
        app
    }

    /// Every state the tests draw, by name.
    fn all_states() -> Vec<(&'static str, App)> {
        let t0 = Instant::now();
        let mut power = images_found();
        power.update(key(KeyCode::Char('q')));
        let mut cancel = restoring(t0);
        cancel.update(key(KeyCode::Esc));
        let mut rejected = confirm();
        typed(&mut rejected, "sda");
        rejected.update(key(KeyCode::Enter));
        let mut starting = App::new();
        starting.start();
        vec![
            ("starting", starting),
            ("images", images_found()),
            ("targets", at_targets(Some(Ok(disks())))),
            ("targets pending", at_targets(None)),
            (
                "targets failed",
                at_targets(Some(Err("no /sys/block".into()))),
            ),
            ("confirm", confirm()),
            ("rejected", rejected),
            ("started", started()),
            ("validating", validating(t0)),
            ("restoring", restoring(t0)),
            ("verifying", verifying(t0)),
            ("failed", failed()),
            ("done", done(true)),
            ("power", power),
            ("cancel", cancel),
        ]
    }

    // ----- the image picker -----

    #[test]
    fn images_before_the_scan_answers() {
        let mut app = App::new();
        app.start();
        let t = snap("images_starting", &app);
        assert!(t.contains("| Searching for images..."));
    }

    #[test]
    fn images_searching() {
        let mut app = App::new();
        app.start();
        discovering(&mut app);
        app.update(Event::Tick(std::time::Instant::now()));
        let t = snap("images_searching", &app);
        assert!(t.contains("/ multicast: searching..."), "{t}");
        assert!(t.contains("Searching for images"));
    }

    #[test]
    fn images_found_with_an_empty_source() {
        let t = snap("images_found", &images_found());
        assert!(t.contains("> ubuntu-24.04-lab"));
        assert!(t.contains("9.0 GiB  HTTP catalog"));
        assert!(t.contains("size ?  multicast"));
        assert!(t.contains("USB stick: no images found"));
        assert!(
            t.contains(" ↑↓ PgUp PgDn move   Enter choose   r rescan   s shell   q/Esc power menu")
        );
    }

    #[test]
    fn images_with_a_failed_source() {
        let mut app = App::new();
        app.start();
        discovering(&mut app);
        app.update(Event::Images {
            from: CATALOG.into(),
            result: Err("fetching http://10.0.0.1/images.json: connection refused".into()),
        });
        app.update(Event::Images {
            from: "USB stick".into(),
            result: Ok(vec![entry(
                "field-laptop",
                Some(20 << 30),
                ImageKind::Local,
                "/run/reimage/usb/images/field-laptop.rimg",
            )]),
        });
        let t = snap("images_failed_source", &app);
        assert!(t.contains("! catalog http://10.0.0.1/images.json: failed: fetching"));
        assert!(t.contains("| multicast: searching..."));
    }

    #[test]
    fn images_none_found() {
        let mut app = App::new();
        app.start();
        discovering(&mut app);
        for from in [CATALOG, "multicast", "USB stick"] {
            app.update(Event::Images {
                from: from.into(),
                result: Ok(vec![]),
            });
        }
        let t = snap("images_none_found", &app);
        assert!(t.contains("No images found."));

        let mut app = App::new();
        app.start();
        app.update(Event::Discovering(vec![]));
        let t = snap("images_nowhere_to_look", &app);
        assert!(t.contains("Nowhere to look for images"));
    }

    #[test]
    fn images_scrolled() {
        let names: Vec<String> = (1..=30).map(|i| format!("image-{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut app = with_images(&names);
        app.update(key(KeyCode::End));
        for _ in 0..9 {
            app.update(key(KeyCode::Up));
        }
        assert_eq!(app.selected_image().unwrap().name, "image-21");
        let t = snap("images_scrolled", &app);
        assert!(t.contains(" 21-30 of 30 images "));
        assert!(t.contains("> image-21"));
        assert!(!t.contains("image-20"));
        // A step down stays on the same page.
        app.update(key(KeyCode::Down));
        assert!(draw(&app, 80, 24).contains(" 21-30 of 30 images "));
        // Taller: more on a page.
        app.update(key(KeyCode::Home));
        let t = snap_at("images_scrolled_120x40", &app, 120, 40);
        assert!(t.contains(" 1-18 of 30 images "), "{t}");
    }

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(200);
        let mut app = App::new();
        app.start();
        app.update(Event::Images {
            from: format!("catalog http://{long}/images.json"),
            result: Ok(vec![
                entry(
                    &format!("classroom-{long}"),
                    Some(1 << 40),
                    ImageKind::Catalog,
                    &format!("http://10.0.0.1/{long}.rimg"),
                ),
                entry("tab\tand\x1b[31mescape", Some(1), ImageKind::Local, "/x"),
            ]),
        });
        let t = snap("images_long_names", &app);
        assert!(t.contains("> classroom-xxx"));
        assert!(t.contains("...    1.0 TiB  HTTP catalog"));
        assert!(!t.contains('\x1b'));
        for line in t.lines() {
            assert!(width(line) <= 80, "{line}");
        }
    }

    #[test]
    fn images_at_120x40() {
        snap_at("images_found_120x40", &images_found(), 120, 40);
    }

    // ----- the target picker -----

    #[test]
    fn targets_pending() {
        let t = snap("targets_pending", &at_targets(None));
        assert!(t.contains("Image: ubuntu-24.04-lab, 9.0 GiB, HTTP catalog"));
        assert!(t.contains("Looking for disks..."));
    }

    #[test]
    fn targets_failed() {
        let app = at_targets(Some(Err(
            "reading /sys/block: No such file or directory (os error 2)".into(),
        )));
        let t = snap("targets_failed", &app);
        assert!(t.contains("Could not list the disks:"));
        assert!(t.contains("No such file or directory"));
    }

    #[test]
    fn targets_empty() {
        let t = snap("targets_empty", &at_targets(Some(Ok(vec![]))));
        assert!(t.contains("No disk to restore onto was found."));
    }

    #[test]
    fn targets_with_partitions() {
        let mut app = at_targets(Some(Ok(disks())));
        app.update(key(KeyCode::Down));
        let t = snap("targets_disks", &app);
        assert!(t.contains("> sda          WDC WD20EZBX-00AYRA0"));
        assert!(t.contains("nvme0n1p1 \"EFI system partition\" 512.0 MiB"));
        assert!(t.contains("serial S4EVNX0R123456   /dev/nvme0n1"));
        assert!(t.contains("(unknown model)"));
        assert!(t.contains("no partitions"));
        assert!(t.contains(" 3 disks "));
        snap_at("targets_disks_120x40", &app, 120, 40);
    }

    #[test]
    fn targets_scrolled() {
        let many: Vec<TargetEntry> = (0..12)
            .map(|i| disk(&format!("sd{}", (b'a' + i) as char)))
            .collect();
        let mut app = at_targets(Some(Ok(many)));
        for _ in 0..7 {
            app.update(key(KeyCode::Down));
        }
        let t = snap("targets_scrolled", &app);
        assert!(t.contains("> sdh"), "{t}");
        assert!(t.contains(" 6-10 of 12 disks "), "{t}");
    }

    // ----- confirm -----

    /// The row the cursor is on, up to the cursor.
    fn before_cursor(t: &str, term: &mut Terminal<TestBackend>) -> String {
        let pos = term.get_cursor_position().unwrap();
        let row = t.lines().nth(usize::from(pos.y)).unwrap();
        row.chars().take(usize::from(pos.x)).collect()
    }

    #[test]
    fn confirm_empty() {
        let (t, mut term) = draw_sized(&confirm(), 80, 24);
        snap_text("confirm_empty", &t, 80, 24);
        assert!(t.contains("WARNING: EVERYTHING ON nvme0n1 WILL BE ERASED."));
        assert!(t.contains("Disk     nvme0n1 (/dev/nvme0n1)"));
        assert!(t.contains("Model    Samsung SSD 970 EVO Plus 500GB"));
        assert!(t.contains("500.0 GiB, nvme, serial S4EVNX0R123456"));
        assert!(t.contains("nvme0n1p3 \"Basic data partition\" 464.0 GiB"));
        assert!(t.contains("ubuntu-24.04-lab, 9.0 GiB"));
        // The cursor waits in the empty field.
        assert_eq!(before_cursor(&t, &mut term), "│   [");
    }

    #[test]
    fn confirm_typed() {
        let mut app = confirm();
        typed(&mut app, "nvme0");
        let (t, mut term) = draw_sized(&app, 80, 24);
        snap_text("confirm_typed", &t, 80, 24);
        assert!(before_cursor(&t, &mut term).ends_with("   [nvme0"));
    }

    #[test]
    fn confirm_rejected() {
        let mut app = confirm();
        typed(&mut app, "sda");
        app.update(key(KeyCode::Enter));
        let t = snap("confirm_rejected", &app);
        assert!(t.contains("\"sda\" is not this disk's name. Type nvme0n1 exactly"));

        let mut app = confirm();
        app.update(key(KeyCode::Enter));
        assert!(draw(&app, 80, 24).contains("Nothing was typed. Type nvme0n1"));
    }

    #[test]
    fn confirm_a_long_input_shows_its_end() {
        let mut app = confirm();
        typed(&mut app, &format!("{}END", "y".repeat(40)));
        let t = draw(&app, 80, 24);
        assert!(t.contains("yyyEND ]"), "{t}");
    }

    #[test]
    fn confirm_many_partitions() {
        let mut app = at_targets(None);
        let parts = (1..=30)
            .map(|i| PartEntry {
                name: format!("sda{i}"),
                size: 1 << 30,
                label: Some(format!("part {i}")),
            })
            .collect();
        app.update(Event::Targets(Ok(vec![TargetEntry {
            partitions: parts,
            ..disk("sda")
        }])));
        app.update(key(KeyCode::Enter));
        let t = snap("confirm_many_partitions", &app);
        assert!(t.contains("and 24 more partitions"), "{t}");
        assert!(t.contains("Type sda and press Enter to erase it"));
    }

    // ----- progress -----

    #[test]
    fn progress_starting() {
        let t = snap("progress_starting", &started());
        assert!(t.contains("Starting the restore..."));
        assert!(t.contains("[waiting]  1. validate"));
    }

    #[test]
    fn progress_validating() {
        let t = snap("progress_validating", &validating(Instant::now()));
        assert!(t.contains("[running]  1. validate"));
        assert!(t.contains("Validating | working..."));
    }

    #[test]
    fn progress_restoring() {
        let t = snap("progress_restoring", &restoring(Instant::now()));
        assert!(t.contains(" 42%"));
        assert!(t.contains("[done]     1. validate"));
        assert!(t.contains("[running]  2. restore"));
        assert!(t.contains("4.2 GiB of 10.0 GiB   100.1 MiB/s   0:59 left   0:44 elapsed"));
        assert!(t.contains("Erased the first MiB"));
        snap_at(
            "progress_restoring_120x40",
            &restoring(Instant::now()),
            120,
            40,
        );
    }

    #[test]
    fn progress_verifying() {
        let t = snap("progress_verifying", &verifying(Instant::now()));
        assert!(t.contains("[running]  3. verify"));
        assert!(t.contains(" 90%"));
    }

    #[test]
    fn progress_multicast() {
        let t0 = Instant::now();
        let mut app = images_found();
        app.update(key(KeyCode::End));
        app.update(key(KeyCode::Enter));
        app.update(Event::Targets(Ok(disks())));
        app.update(key(KeyCode::Enter));
        typed(&mut app, "nvme0n1");
        app.update(key(KeyCode::Enter));
        let at = |s: u64| t0 + Duration::from_secs(s);
        let total = 30 << 30;
        progress(
            &mut app,
            vec![
                ProgressEvent::Finish {
                    phase: Phase::ValidateTarget,
                    at: at(0),
                },
                ProgressEvent::Note("Joined 239.255.42.1:4242 on eth0".into()),
                ProgressEvent::Start {
                    phase: Phase::Restore,
                    total,
                    at: at(0),
                },
                ProgressEvent::Update {
                    phase: Phase::Restore,
                    done: 0,
                    total,
                    at: at(0),
                },
                ProgressEvent::Update {
                    phase: Phase::Restore,
                    done: 21 << 30,
                    total,
                    at: at(3000),
                },
                ProgressEvent::Multicast {
                    loss_percent: 2.345,
                    passes: 2,
                },
            ],
        );
        let t = snap("progress_multicast", &app);
        assert!(t.contains("Image  lab-2024 (room 101), multicast"));
        assert!(t.contains("Multicast: 2.3% of packets lost, 2 passes of the stream seen"));
        assert!(t.contains("50:00 elapsed"), "{t}");
    }

    #[test]
    fn progress_long_log_shows_its_end() {
        let mut app = restoring(Instant::now());
        progress(
            &mut app,
            (1..=50)
                .map(|i| ProgressEvent::Note(format!("log line {i}")))
                .collect(),
        );
        let t = snap("progress_long_log", &app);
        assert!(t.contains("log line 50"));
        assert!(!t.contains("log line 40\n"));
    }

    #[test]
    fn progress_stopping() {
        let mut app = restoring(Instant::now());
        app.update(key(KeyCode::Esc));
        app.update(key(KeyCode::Char('y')));
        let t = snap("progress_stopping", &app);
        assert!(t.contains("reimage: Stopping the restore..."));
        assert!(t.contains("Stopping, please wait..."));
    }

    // ----- failed, done -----

    #[test]
    fn failed_after_writing() {
        let t = snap("failed", &failed());
        assert!(t.contains("The restore failed:"));
        assert!(t.contains("Input/output error"));
        assert!(t.contains("it may be failing"));
        assert!(t.contains("nvme0n1 has been erased"));
        assert!(t.contains("> Retry: same image, same disk"));
    }

    #[test]
    fn failed_with_a_message_longer_than_the_screen() {
        let mut app = restoring(Instant::now());
        app.update(Event::Finished(Err("word ".repeat(400))));
        let t = snap("failed_long_message", &app);
        assert!(t.contains("word w..."), "{t}");
        assert!(t.contains("Power off"), "the choices stay on the screen");
    }

    #[test]
    fn stopped_before_writing() {
        let mut app = validating(Instant::now());
        app.update(key(KeyCode::Char('q')));
        let t = snap("popup_cancel_before_writing", &app);
        assert!(t.contains("leaves nvme0n1 as it is"));
        assert!(t.contains("> Keep going <"));
        app.update(key(KeyCode::Char('y')));
        app.update(Event::Finished(Err("cancelled".into())));
        app.update(key(KeyCode::Down));
        let t = snap("failed_stopped", &app);
        assert!(t.contains("You stopped the restore:"));
        assert!(t.contains("  cancelled"));
        assert!(t.contains("Nothing was written: nvme0n1 is as it was."));
        assert!(t.contains("> Choose another image"));
    }

    #[test]
    fn done_screen() {
        let t = snap("done", &done(true));
        assert!(t.contains("Written   8.5 GiB"));
        assert!(t.contains("Time      1:47 (81.3 MiB/s)"), "{t}");
        assert!(t.contains("yes: everything written was read back"));
        assert!(t.contains("> Reboot"));

        let mut app = done(false);
        app.update(key(KeyCode::Down));
        app.update(key(KeyCode::Down));
        let t = snap("done_unverified", &app);
        assert!(t.contains("no: verification was switched off"));
        assert!(t.contains("> Image another disk"));
    }

    // ----- popups -----

    #[test]
    fn power_popup() {
        let mut app = images_found();
        app.update(key(KeyCode::Char('q')));
        app.update(key(KeyCode::Down));
        let t = snap("popup_power", &app);
        assert!(t.contains("> Power off"));
        assert!(t.contains("Back to the menu"));
        assert!(t.contains(" ↑↓ choose   Enter select   Esc back"));
    }

    #[test]
    fn cancel_popup() {
        let mut app = restoring(Instant::now());
        app.update(key(KeyCode::Esc));
        app.update(key(KeyCode::Right));
        let t = snap("popup_cancel", &app);
        assert!(t.contains("Stop the restore?"));
        assert!(t.contains("leaves it erased"));
        assert!(t.contains("> Stop <"));
    }

    // ----- sizes -----

    #[test]
    fn tiny_terminals() {
        let app = restoring(Instant::now());
        let t = snap_at("tiny_10x3", &app, 10, 3);
        assert!(t.starts_with("reimage:"));
        assert_eq!(draw(&app, 0, 0), "");
        snap_at("tiny_39x24", &app, 39, 24);
    }

    #[test]
    fn every_state_draws_at_every_size() {
        for (name, app) in all_states() {
            for w in (0..=130).step_by(7).chain([1, 39, 40, 41, 80, 81]) {
                for h in (0..=45).step_by(4).chain([1, 11, 12, 13, 24, 25]) {
                    let t = draw(&app, w, h);
                    let rows = if w == 0 { 0 } else { usize::from(h) };
                    assert_eq!(t.lines().count(), rows, "{name} at {w}x{h}");
                }
            }
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefg", 6), "abc...");
        assert_eq!(fit("abcdefg", 2), "..");
        assert_eq!(fit("a\nb", 5), "a b");
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(pad_left("ab", 4), "  ab");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh", 3), ["abc", "def", "gh"]);
        assert_eq!(wrap("a\n\nb", 3), ["a", "", "b"]);
        assert_eq!(wrap("", 3), [""]);
        assert_eq!(clock(Duration::from_secs(59)), "0:59");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(window(&[2, 2, 2, 2, 2], 0, 5), 0..2);
        assert_eq!(window(&[2, 2, 2, 2, 2], 3, 5), 2..4);
        assert_eq!(window(&[2, 2, 2, 2, 2], 4, 5), 4..5);
        assert_eq!(window(&[9, 9], 1, 5), 1..2, "a tall entry still shows");
    }
}
