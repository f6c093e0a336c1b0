//! `cube run`, `cube stop`, `cube status` and `cube node`: clients of the manager's API.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, Result};
use chrono::Utc;
use cube_core::wire::{NodeView, TaskView};
use cube_core::{DesiredState, STOPPED_BY_USER, TaskState};

use crate::args::{NodeArgs, OutputFormat, RunArgs, StatusArgs, StopArgs};
use crate::client::ManagerClient;

/// Submits the task file and prints the task id alone on stdout.
pub async fn run(args: RunArgs) -> Result<()> {
    let body = std::fs::read(&args.file).with_context(|| {
        format!(
            "failed to read task file '{}'; check the path",
            args.file.display()
        )
    })?;
    let client = ManagerClient::new(&args.address.manager)?;
    let submitted = client.submit(body).await?;
    if !submitted.created {
        log::info!(
            "task {} already existed with the same spec",
            submitted.task.id
        );
    }
    println!("{}", submitted.task.id);
    Ok(())
}

/// Stops a task and prints its id.
pub async fn stop(args: StopArgs) -> Result<()> {
    let client = ManagerClient::new(&args.address.manager)?;
    let task = client.stop(&args.id).await?;
    println!("{}", task.id);
    Ok(())
}

/// Prints all tasks, or one, as a table or JSON.
pub async fn status(args: StatusArgs) -> Result<()> {
    let client = ManagerClient::new(&args.address.manager)?;
    let text = match (&args.id, args.output) {
        (Some(id), OutputFormat::Json) => to_json(&client.task(id).await?)?,
        (Some(id), OutputFormat::Table) => task_table(&[client.task(id).await?]),
        (None, OutputFormat::Json) => to_json(&client.tasks().await?)?,
        (None, OutputFormat::Table) => task_table(&client.tasks().await?),
    };
    print_out(&text)
}

/// Prints the nodes as a table or JSON.
pub async fn node(args: NodeArgs) -> Result<()> {
    let client = ManagerClient::new(&args.address.manager)?;
    let nodes = client.nodes().await?;
    let text = match args.output {
        OutputFormat::Json => to_json(&nodes)?,
        OutputFormat::Table => node_table(&nodes),
    };
    print_out(&text)
}

fn print_out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("failed to write to stdout")?;
    stdout.flush().context("failed to write to stdout")
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("failed to encode JSON")?;
    text.push('\n');
    Ok(text)
}

/// Renders tasks as aligned columns; the reason column explains pending and failed tasks.
pub fn task_table(tasks: &[TaskView]) -> String {
    let mut rows = vec![
        [
            "ID", "NAME", "STATE", "DESIRED", "NODE", "PORTS", "AGE", "RESTARTS", "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let now = Utc::now();
    for task in tasks {
        let ports = task
            .host_ports
            .iter()
            .map(|port| {
                format!(
                    "{}:{}->{}/{}",
                    port.host_ip, port.host_port, port.container_port, port.protocol
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let reason = task_reason(task);
        rows.push(vec![
            task.id.to_string(),
            task.name.clone(),
            task.state.to_string(),
            serde_json::to_value(task.desired_state)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
            task.node
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
            if ports.is_empty() || task.state.is_terminal() {
                "-".into()
            } else {
                ports
            },
            format_age((now - task.created_at).num_seconds()),
            task.restart_count.to_string(),
            reason,
        ]);
    }
    render(&rows)
}

/// Renders nodes as aligned columns of allocated and total capacity.
pub fn node_table(nodes: &[NodeView]) -> String {
    let mut rows = vec![
        [
            "ID",
            "STATUS",
            "CPU ALLOC/CAP (FREE)",
            "MEMORY ALLOC/CAP (FREE)",
            "DISK ALLOC/CAP (FREE)",
            "TASKS",
            "ADDRESS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in nodes {
        rows.push(vec![
            node.id.to_string(),
            serde_json::to_value(node.status)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default(),
            format!(
                "{:.2}/{:.2} ({:.2})",
                node.allocated.cpu, node.capacity.cpu, node.free.cpu
            ),
            format!(
                "{}/{} ({})",
                node.allocated.memory, node.capacity.memory, node.free.memory
            ),
            format!(
                "{}/{} ({})",
                node.allocated.disk, node.capacity.disk, node.free.disk
            ),
            node.task_count.to_string(),
            node.address.clone().unwrap_or_else(|| "in-process".into()),
        ]);
    }
    render(&rows)
}

/// Picks the reason that explains the task's current state, so that an old error does not
/// linger next to a task that runs or was stopped.
fn task_reason(task: &TaskView) -> String {
    match task.state {
        TaskState::Pending => task.pending_reason.clone().unwrap_or_default(),
        TaskState::Running => String::new(),
        TaskState::Completed if task.desired_state == DesiredState::Stopped => {
            STOPPED_BY_USER.to_owned()
        }
        TaskState::Completed if task.exit_code == Some(0) => "exited with code 0".to_owned(),
        _ => task.last_error.clone().unwrap_or_default(),
    }
}

fn format_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[column]);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_aligns_columns() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["long".to_owned(), "x".to_owned(), "y".to_owned()],
        ];
        assert_eq!(render(&rows), "A     BB  C\nlong  x   y\n");
    }

    #[test]
    fn format_age_picks_units() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(125), "2m");
        assert_eq!(format_age(7200), "2h");
        assert_eq!(format_age(-3), "0s");
    }
}
