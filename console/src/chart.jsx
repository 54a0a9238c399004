// A small line chart of [x, y] points as an SVG: no library, no inline style (the CSP allows
// none). The last value is said in text beside it, for those who cannot see the line.
export function Sparkline({ id, label, points, unit, width = 240, height = 48 }) {
  const last = points.length ? points[points.length - 1][1] : null;
  let path = '';
  if (points.length > 1) {
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const y1 = Math.max(...ys, 1e-9);
    path = points.map(([x, y], i) => {
      const px = ((x - x0) / Math.max(x1 - x0, 1)) * (width - 2) + 1;
      const py = height - 1 - (y / y1) * (height - 2);
      return `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`;
    }).join(' ');
  }
  return (
    <figure class="spark" id={id}>
      <svg viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img"
        aria-label={`${label} over time`}>
        <rect class="frame" x="0.5" y="0.5" width={width - 1} height={height - 1} />
        {path && <path d={path} />}
      </svg>
      <figcaption>{label}: <span class="value">
        {last === null ? '—' : `${last.toFixed(last < 10 ? 2 : 0)} ${unit}`}</span></figcaption>
    </figure>
  );
}
