(function () {
  function resize() { document.querySelectorAll('.js-plotly-plot').forEach(function (el) { Plotly.Plots.resize(el); }); }
  if (window.matchMedia) { var mq = window.matchMedia('print'); (mq.addEventListener ? mq.addEventListener('change', resize) : mq.addListener(resize)); }
  window.addEventListener('beforeprint', resize);
  window.addEventListener('afterprint', resize);
  var a = document.getElementById('fp-download-json');
  var data = document.getElementById('{{ result_script_id }}');
  if (a && data && window.Blob && window.URL) {
    a.href = URL.createObjectURL(new Blob([data.textContent], {type: 'application/json'}));
  }
})();
