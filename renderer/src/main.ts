// Until the lab UI lands, the window says what MigLab is and where the working parts are.
const root = document.getElementById('root');
if (root) {
  root.innerHTML =
    '<h1>MigLab</h1><p>The lab engine runs from the command line for now: <code>npx miglab doctor</code>, ' +
    '<code>npx miglab guest boot</code>.</p>';
}
