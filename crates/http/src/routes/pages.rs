//! Server-rendered pages: small HTML, no build step, no front-end server.

use axum::extract::State;
use axum::response::Html;

use crate::problem::ApiError;
use crate::state::AppState;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const HEAD: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Stampede</title>
<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#111}
li{margin:.6rem 0}.price{font-weight:600}.was{text-decoration:line-through;color:#555}</style></head><body>"#;

/// The storefront: live and upcoming sales.
pub async fn storefront(State(s): State<AppState>) -> Result<Html<String>, ApiError> {
    let now = s.app.clock.now();
    let sales = s.app.list_sales(None).await?;
    let mut html = String::from(HEAD);
    html.push_str("<h1>Stampede</h1><ul>");
    for sale in &sales {
        html.push_str(&format!(
            "<li><strong>{}</strong> — <span class=price>{} {}</span> <span class=was>{}</span> · {} of {} left · {}</li>",
            escape(&sale.name),
            sale.sale_price.format(&sale.currency),
            escape(sale.currency.as_str()),
            sale.original_price.format(&sale.currency),
            sale.stock.available,
            sale.stock.total,
            sale.status_at(now).as_str(),
        ));
    }
    if sales.is_empty() {
        html.push_str("<li>No sales yet.</li>");
    }
    html.push_str("</ul><p>API: <a href=\"/openapi.json\">/openapi.json</a></p></body></html>");
    Ok(Html(html))
}

/// The admin entry page; the data lives behind the admin API.
pub async fn admin() -> Html<String> {
    Html(format!(
        "{HEAD}<h1>Stampede admin</h1><p>Use the admin API with an admin token: \
         <code>/api/v1/admin/sales</code>, <code>/api/v1/admin/sales/{{id}}/metrics</code>, \
         <code>/api/v1/admin/audit</code>.</p></body></html>"
    ))
}
