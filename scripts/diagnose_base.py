"""Diagnose the tiny base: can a fresh UNet + text encoder memorise 64 web images with the trained
VAE, and do DPM-Solver++, DDIM and DDPM sampling agree? Writes /tmp/overfit2.png (rows: real images,
then DPM-Solver++ 25, DDIM 50, DDPM 200 samples) and prints loss and sampled-latent std.

    OMP_WAIT_POLICY=PASSIVE python scripts/diagnose_base.py   # ~5 minutes on 2 cores
Needs runs/base-pretrain/ (tokenizer, vae checkpoint) and data/synthvi from `dive base pretrain`.
"""
import torch, numpy as np, time
torch.set_num_threads(2)
from PIL import Image
import torch.nn.functional as F
from dive.base.models import TinySDConfig, build_vae, build_unet, build_text_encoder, training_scheduler, sampling_scheduler
from dive.base.tokenizer import load_tokenizer
from dive.base.pretrain import load_web_pool, to_unit
from dive.utils.state import load_training_state
cfg=TinySDConfig(); tok=load_tokenizer('runs/base-pretrain/tokenizer')
vae=build_vae(cfg); load_training_state('runs/base-pretrain/vae/checkpoint-2000', modules={'vae':vae}); vae.eval()
imgs, caps = load_web_pool('data/synthvi', 64, 128, 64)
with torch.no_grad():
    post=vae.encode(to_unit(imgs)).latent_dist
mean=post.mean; sf=float(1/mean.std()); print('sf',sf)
ids=tok(caps,padding='max_length',max_length=77,truncation=True,return_tensors='pt').input_ids
torch.manual_seed(0); te=build_text_encoder(cfg,tok); unet=build_unet(cfg); sched=training_scheduler()
opt=torch.optim.AdamW(list(unet.parameters())+list(te.parameters()),lr=1e-3)
t0=time.time()
for step in range(500):
    idx=torch.randint(0,64,(32,)); lat=mean[idx]*sf; noise=torch.randn_like(lat); t=torch.randint(0,1000,(32,))
    pred=unet(sched.add_noise(lat,noise,t),t,encoder_hidden_states=te(ids[idx])[0]).sample
    loss=F.mse_loss(pred,noise); opt.zero_grad(); loss.backward(); opt.step()
    if step%100==0: print(step, round(loss.item(),4), round(time.time()-t0))
vae.register_to_config(scaling_factor=sf)
from diffusers import StableDiffusionPipeline
pipe=StableDiffusionPipeline(vae=vae,text_encoder=te,tokenizer=tok,unet=unet,scheduler=sampling_scheduler(),safety_checker=None,feature_extractor=None,requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
from diffusers import DDIMScheduler, DDPMScheduler
from dive.base.models import scheduler_config
rows=[np.concatenate(list(imgs[:6].permute(0,2,3,1).numpy()),1)]
for name, sch, n in [('dpm++', sampling_scheduler(), 25), ('ddim', DDIMScheduler(**scheduler_config(), clip_sample=False), 50), ('ddpm', DDPMScheduler(**scheduler_config(), clip_sample=False), 200)]:
    pipe.scheduler=sch
    out=pipe(caps[:6],height=128,width=64,num_inference_steps=n,guidance_scale=1.0,generator=torch.Generator().manual_seed(0),output_type='latent').images
    print(name, 'sampled latent std', round(float(out.std()),3), 'train latent std', round(float((mean*sf).std()),3))
    dec=vae.decode(out/sf).sample.clamp(-1,1)
    rows.append(((dec.permute(0,2,3,1).detach().numpy()+1)*127.5).round().astype(np.uint8).reshape(6,128,64,3).transpose(1,0,2,3).reshape(128,384,3))
Image.fromarray(np.concatenate(rows,0)).save('/tmp/overfit2.png')
print('done', round(time.time()-t0))
