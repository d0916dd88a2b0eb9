window.onerror=function(msg,src,line,col){var e=document.getElementById('errors');
if(e){e.hidden=false;e.textContent+=msg+' (line '+line+')\n';}};
