// Two fixes to how dcc.Graph hands figures to plotly.js (it calls the global Plotly.react;
// plotly.js is loaded by a plain script tag before this file, see app/dashboard/plotlyjs.py).
//
// 1. Stale axes. Plotly.react keeps each surviving axis's constraint state (the scaleanchor /
//    constrain="domain" bookkeeping of square heatmap cells) from the figure before: after
//    n 64 → 16 the axes showed −1.2..16.2 instead of −0.5..15.5, and after layers = 4 panels
//    1–2 kept the widened ranges while the new panels 3–4 were right. The same figure drawn on
//    a fresh plot is right, so when a figure's shape (its axes, their ranges and domains)
//    changes the plot is purged first and drawn anew; a switch that keeps the shape (another
//    head, the same n) still goes through the fast react. No page listens to graph events
//    (clickData, relayoutData), which a purge drops.
// 2. Clipped figures. A figure laid out wider than its card (multi-panel figures: 1520 px in
//    a 1400 px card, its colour-bar labels cut) is drawn at the card's width instead
//    (autosize; its height stays), and such figures follow the window's width.
(function () {
  "use strict";
  const Plotly = window.Plotly;
  if (!Plotly || Plotly.__fgWrapped) return;
  const react = Plotly.react.bind(Plotly);

  function shapeKey(layout) {
    const axes = Object.keys(layout || {}).filter((k) => /^[xy]axis\d*$/.test(k)).sort();
    return JSON.stringify(axes.map((k) => [k, layout[k].range, layout[k].domain]));
  }

  function cardWidth(gd) {
    const holder = gd.parentElement;  // dcc.Graph's div, as wide as the card's content
    return holder ? holder.clientWidth : 0;
  }

  function fit(gd, layout) {
    const width = cardWidth(gd);
    if (layout && layout.width && width > 0 && layout.width > width) {
      delete layout.width;
      layout.autosize = true;
    }
  }

  Plotly.react = function (gd, figure, ...rest) {
    const el = typeof gd === "string" ? document.getElementById(gd) : gd;
    const layout = figure && figure.data !== undefined ? figure.layout : rest[0];
    if (el) {
      fit(el, layout);
      const key = shapeKey(layout);
      if (el._fullLayout && el.__fgShape !== undefined && el.__fgShape !== key) {
        Plotly.purge(el);
      }
      el.__fgShape = key;
    }
    return react(gd, figure, ...rest);
  };
  Plotly.__fgWrapped = true;

  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      document.querySelectorAll(".js-plotly-plot").forEach((gd) => {
        if (!gd._fullLayout || !gd.layout) return;
        fit(gd, gd.layout);  // (Plotly.relayout of width: null throws here)
        if (gd.layout.autosize && !gd.layout.width) Plotly.Plots.resize(gd);
      });
    }, 150);
  });
})();
