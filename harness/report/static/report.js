(function(){
var boxes=document.querySelectorAll('input[data-outcome]');var q=document.getElementById('q');
function apply(){var on={};boxes.forEach(function(b){on[b.getAttribute('data-outcome')]=b.checked;});
var text=(q.value||'').toLowerCase();var shown=0;
document.querySelectorAll('section.cell').forEach(function(s){
var ok=on[s.getAttribute('data-outcome')]!==false&&s.getAttribute('data-id').toLowerCase().indexOf(text)>=0;
s.hidden=!ok;if(ok)shown++;});document.getElementById('shown').textContent=shown;}
boxes.forEach(function(b){b.addEventListener('change',apply);});q.addEventListener('input',apply);
function reveal(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;
var el=document.getElementById(id);if(!el)return;
for(var p=el;p;p=p.parentElement){if(p.tagName==='DETAILS')p.open=true;if(p.hidden)p.hidden=false;}
el.scrollIntoView({block:'center'});el.classList.add('flash');
setTimeout(function(){el.classList.remove('flash');},1500);}
window.addEventListener('hashchange',reveal);apply();reveal();
document.body.setAttribute('data-ready','1');
})();
